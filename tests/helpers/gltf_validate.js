// Validate a GLB with the Khronos glTF validator (npm package gltf-validator) and print its JSON report.
// Usage: node tests/helpers/gltf_validate.js file.glb   (run from the repository root, where node_modules is)
const fs = require("fs");
const path = require("path");
const validator = require(path.join(process.cwd(), "node_modules", "gltf-validator"));

const file = process.argv[2];
const bytes = new Uint8Array(fs.readFileSync(file));
validator
  .validateBytes(bytes, { maxIssues: 100, writeTimestamp: false })
  .then((report) => {
    process.stdout.write(JSON.stringify(report));
  })
  .catch((error) => {
    process.stderr.write(String(error) + "\n");
    process.exit(2);
  });
