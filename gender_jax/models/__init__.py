"""The networks, their pretrained weights and the Winograd convolutions of VGG16 on CPU."""
