// Writes web/sdk/traverse.d.ts from the JSDoc of traverse.js: tsc with web/sdk/tsconfig.json (checkJs, declarations
// only), plus what `stripInternal` does for TypeScript sources, which tsc does not do for JavaScript ones
// (microsoft/TypeScript#38444 and #56928, "Won't Fix"): a member or statement whose JSDoc says `@internal` is left out,
// and so is a declaration that only such ones named (`Recovery` and `Session`, exported under internal names for the
// unit tests). `@internal` is for what another class of the module uses (`room._send`); what only its own class uses
// is `@private`, which tsc declares `private`, without its type. A `@typedef` in a comment that says `@internal`
// (`Clock`) is not exported, and is left out unless a kept declaration names it. Type errors fail it, as they fail tsc.
//
//   npm run types                                # in tests/sdk: writes web/sdk/traverse.d.ts
//   node tests/sdk/declarations.mjs --outDir DIR  # writes DIR/traverse.d.ts instead (types.test.mjs)
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const here = path.dirname(fileURLToPath(import.meta.url));
const config = path.resolve(here, '../../web/sdk/tsconfig.json');

/** The JSDoc of what tsc made `node` from says `@internal`. @param {ts.Node} node */
function isInternal(node) {
  return ts.getJSDocTags(ts.getOriginalNode(node)).some((tag) => tag.tagName.text === 'internal');
}

/** @param {ts.Statement} s */
function isExported(s) {
  if (ts.isExportDeclaration(s) || ts.isExportAssignment(s)) return true;
  return !!(ts.canHaveModifiers(s) && ts.getModifiers(s)?.some((m) => m.kind === ts.SyntaxKind.ExportKeyword));
}

/** The names a top-level statement declares (a function and a namespace may share one). @param {ts.Statement} s */
function declaredNames(s) {
  if (ts.isVariableStatement(s)) {
    return s.declarationList.declarations.flatMap((d) => (ts.isIdentifier(d.name) ? [d.name.text] : []));
  }
  const name = /** @type {any} */ (s).name;
  return name && ts.isIdentifier(name) ? [name.text] : [];
}

/** Every identifier under `node`. @param {ts.Node} node @param {Set<string>} into */
function namesUsed(node, into) {
  if (ts.isIdentifier(node)) into.add(node.text);
  ts.forEachChild(node, (child) => {
    namesUsed(child, into);
  });
  return into;
}

/**
 * Keeps what is exported and the declarations it names, directly or through others: tsc declared a class or a
 * function of the module because an export named it, and that export may be gone.
 * @param {ts.Statement[]} statements
 */
function reachable(statements) {
  const kept = new Set(statements.filter((s) => isExported(s) || declaredNames(s).length === 0));
  const used = new Set();
  let added = [...kept];
  while (added.length) {
    for (const s of added) namesUsed(s, used);
    added = statements.filter((s) => !kept.has(s) && declaredNames(s).some((n) => used.has(n)));
    for (const s of added) kept.add(s);
  }
  return statements.filter((s) => kept.has(s));
}

/**
 * The names exported by an `export {…}` of the sources whose JSDoc says `@internal`, and by a `@typedef` (or
 * `@callback`) in a JSDoc comment that says it. tsc writes the declarations' `export {…}` and type aliases anew,
 * without a link to the source, so they are left out by name.
 * @param {ts.Program} program
 */
function internalExports(program) {
  const names = new Set();
  const checker = program.getTypeChecker();
  /** A typedef is an export of its module, declared by its tag, whose parent is the comment. @param {ts.Node} d */
  const internalTypedef = (d) =>
    (ts.isJSDocTypedefTag(d) || ts.isJSDocCallbackTag(d)) &&
    ts.isJSDoc(d.parent) &&
    !!d.parent.tags?.some((tag) => tag.tagName.text === 'internal');
  for (const file of program.getSourceFiles()) {
    if (file.isDeclarationFile) continue;
    for (const s of file.statements) {
      if (!ts.isExportDeclaration(s) || !isInternal(s) || !s.exportClause) continue;
      if (ts.isNamedExports(s.exportClause)) for (const e of s.exportClause.elements) names.add(e.name.text);
    }
    const module = checker.getSymbolAtLocation(file);
    for (const symbol of module ? checker.getExportsOfModule(module) : []) {
      if (symbol.declarations?.some(internalTypedef)) names.add(symbol.name);
    }
  }
  return names;
}

/** @param {Set<string>} hiddenExports @returns {ts.TransformerFactory<ts.SourceFile | ts.Bundle>} */
const stripInternal = (hiddenExports) => () => (file) => {
  if (!ts.isSourceFile(file)) return file;
  const f = ts.factory;
  const statements = file.statements.flatMap((s) => {
    if (isInternal(s)) return [];
    if (ts.isTypeAliasDeclaration(s) && hiddenExports.has(s.name.text)) {
      // Not exported, rather than left out: a public declaration that names it still compiles (and `reachable`
      // drops it when none does).
      const modifiers = s.modifiers?.filter((m) => m.kind !== ts.SyntaxKind.ExportKeyword);
      return [f.updateTypeAliasDeclaration(s, modifiers, s.name, s.typeParameters, s.type)];
    }
    if (ts.isClassDeclaration(s)) {
      const members = s.members.filter((m) => !isInternal(m));
      return [f.updateClassDeclaration(s, s.modifiers, s.name, s.typeParameters, s.heritageClauses, members)];
    }
    if (ts.isExportDeclaration(s) && s.exportClause && ts.isNamedExports(s.exportClause)) {
      const kept = s.exportClause.elements.filter((e) => !hiddenExports.has(e.name.text));
      if (kept.length === s.exportClause.elements.length) return [s];
      if (kept.length === 0) return [];
      const clause = f.updateNamedExports(s.exportClause, kept);
      return [f.updateExportDeclaration(s, s.modifiers, s.isTypeOnly, clause, s.moduleSpecifier, s.attributes)];
    }
    return [s];
  });
  return f.updateSourceFile(file, reachable(statements));
};

/** Type-checks the SDK and writes its declarations (into `outDir`, else beside it); false on errors. */
export function emitDeclarations(outDir) {
  const host = { ...ts.sys, onUnRecoverableConfigFileDiagnostic: (d) => fail([d]) };
  const parsed = ts.getParsedCommandLineOfConfigFile(config, outDir ? { outDir: path.resolve(outDir) } : {}, host);
  if (!parsed) return false;
  const program = ts.createProgram({ rootNames: parsed.fileNames, options: parsed.options });
  const before = [...parsed.errors, ...ts.getPreEmitDiagnostics(program)];
  if (before.length) return fail(before);
  const strip = stripInternal(internalExports(program));
  const { diagnostics } = program.emit(undefined, undefined, undefined, true, { afterDeclarations: [strip] });
  return diagnostics.length ? fail(diagnostics) : true;
}

/** @param {readonly ts.Diagnostic[]} diagnostics */
function fail(diagnostics) {
  const format = { getCanonicalFileName: (f) => f, getCurrentDirectory: () => process.cwd(), getNewLine: () => '\n' };
  const text = process.stderr.isTTY ? ts.formatDiagnosticsWithColorAndContext : ts.formatDiagnostics;
  process.stderr.write(text(diagnostics, format));
  return false;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const at = process.argv.indexOf('--outDir');
  if (!emitDeclarations(at > 0 ? process.argv[at + 1] : undefined)) process.exitCode = 1;
}
