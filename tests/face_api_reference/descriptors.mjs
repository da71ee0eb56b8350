// face-api's own FaceRecognitionNet on TF.js's CPU backend: the reference descriptors that
// tests/test_face_resnet.py compares gender_jax.models.face_resnet against. How to run it: the
// README beside it (node descriptors.mjs NODE_DIR FACES.rgb > descriptors.json).
//
// face-api's Node build without native code (dist/face-api.node-wasm.js) needs @tensorflow/tfjs
// and the wasm backend installed beside it; the cpu backend (tfjs-backend-cpu, inside
// @tensorflow/tfjs) runs it, as plain JavaScript float32.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const SIZE = 150;
const [dir, facesFile] = process.argv.slice(2);
if (!dir || !facesFile) {
  console.error('usage: node descriptors.mjs NODE_DIR FACES.rgb > descriptors.json');
  process.exit(2);
}
const require = createRequire(path.resolve(dir, 'package.json'));
const tf = require('@tensorflow/tfjs');
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

await tf.setBackend('cpu');
await tf.ready();
const packageDir = path.dirname(require.resolve('@vladmandic/face-api/package.json'));
const modelDir = path.join(packageDir, 'model');
const net = faceapi.nets.faceRecognitionNet;
await net.loadFromDisk(modelDir);

// The weights as TF.js decoded them (float32 bytes), so the converter can be checked bit for bit.
const weights = {};
for (const { path: name, tensor } of net.getParamList()) {
  const values = tensor.dataSync();
  weights[name] = sha256(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
}

const pixels = fs.readFileSync(facesFile);
const count = pixels.length / (SIZE * SIZE * 3);
const inputs = [];
const descriptors = [];
for (let i = 0; i < count; i += 1) {
  const face = pixels.subarray(i * SIZE * SIZE * 3, (i + 1) * SIZE * SIZE * 3);
  inputs.push(sha256(face));
  const image = tf.tensor3d(Int32Array.from(face), [SIZE, SIZE, 3], 'int32');
  descriptors.push(Array.from(await net.computeFaceDescriptor(image)));
  image.dispose();
}

const files = {};
for (const name of ['face_recognition_model-weights_manifest.json', 'face_recognition_model.bin']) {
  files[name] = sha256(fs.readFileSync(path.join(modelDir, name)));
}
const pkg = JSON.parse(fs.readFileSync(path.join(packageDir, 'package.json')));
const head = JSON.stringify({
  face_api: pkg.version,
  tfjs: tf.version.tfjs,
  backend: tf.getBackend(),
  node: process.version,
  model_sha256: files,
  weights_sha256: weights,
  input_sha256: inputs,
}, null, 1);
// One line per face: JSON numbers print each float32 exactly (as the double it widens to).
const rows = descriptors.map((d) => `  ${JSON.stringify(d)}`).join(',\n');
process.stdout.write(`${head.slice(0, -2)},\n "descriptors": [\n${rows}\n ]\n}\n`);
