"""Faces in photos: MTCNN detection, alignment onto a template, and the model's face input."""
