//! The module graph of both crates (the runtime `lethe` and the command line `lethe-cli`):
//! no module imports another that imports it back, directly or through others, and in the
//! runtime each module imports only modules of lower layers, as DESIGN.md's layer table says.
//!
//! The graph is read from the sources with `syn`: a module is a file (or an inline `mod`
//! block; `#[cfg(test)]` modules are left out), and it imports every module named by its `use`
//! declarations and by the `crate::`, `super::` and `self::` paths in its code. Items are
//! imported from the module that defines them, never through the crate root's re-exports
//! (which would make every module depend on every other).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// A module path inside its crate (`[]` is the crate root).
type ModPath = Vec<String>;

struct Module {
    file: PathBuf,
    /// Every path the module names, made absolute (first segment: a top-level module).
    uses: Vec<ModPath>,
}

/// Collects the paths one module names, without descending into inline modules.
struct Names<'a> {
    here: &'a [String],
    children: &'a BTreeSet<String>,
    found: Vec<ModPath>,
}

impl Names<'_> {
    /// Makes a path absolute; `None` for paths outside the crate (std, dependencies, locals).
    fn resolve(&self, segments: &[String]) -> Option<ModPath> {
        let mut out: Vec<String> = match segments.first().map(String::as_str) {
            Some("crate") => Vec::new(),
            Some("self") => self.here.to_vec(),
            Some("super") => {
                let mut base = self.here.to_vec();
                let mut rest = segments;
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                return Some(base);
            }
            Some(first) if self.children.contains(first) => {
                let mut base = self.here.to_vec();
                base.extend(segments.iter().cloned());
                return Some(base);
            }
            _ => return None,
        };
        out.extend(segments[1..].iter().cloned());
        Some(out)
    }

    fn add(&mut self, segments: &[String]) {
        if let Some(path) = self.resolve(segments) {
            self.found.push(path);
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let name = n.ident.to_string();
                if name == "self" {
                    self.add(prefix);
                } else {
                    prefix.push(name);
                    self.add(prefix);
                    prefix.pop();
                }
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.add(prefix);
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.add(prefix),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Names<'_> {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if matches!(
            segments.first().map(String::as_str),
            Some("crate" | "super" | "self")
        ) {
            self.add(&segments);
        }
        syn::visit::visit_path(self, path);
    }

    // Inline modules are modules of their own (see `read_items`).
    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {}

    // `pub(super)`, `pub(in crate::x)`: who may see an item, not what it imports.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// The modules of a crate whose root file is `root` (`lib.rs`).
fn read_crate(root: &Path) -> BTreeMap<ModPath, Module> {
    let mut modules = BTreeMap::new();
    read_file(root, root.parent().unwrap(), Vec::new(), &mut modules);
    modules
}

/// Reads the module in `file` at `path`; its file submodules live in `dir`.
fn read_file(file: &Path, dir: &Path, path: ModPath, out: &mut BTreeMap<ModPath, Module>) {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    read_items(&ast.items, file, dir, path, out);
}

fn read_items(
    items: &[syn::Item],
    file: &Path,
    dir: &Path,
    path: ModPath,
    out: &mut BTreeMap<ModPath, Module>,
) {
    let mods: Vec<&syn::ItemMod> = items
        .iter()
        .filter_map(|i| match i {
            syn::Item::Mod(m) if !is_cfg_test(&m.attrs) => Some(m),
            _ => None,
        })
        .collect();
    let children: BTreeSet<String> = mods.iter().map(|m| m.ident.to_string()).collect();
    let mut names = Names {
        here: &path,
        children: &children,
        found: Vec::new(),
    };
    for item in items {
        names.visit_item(item);
    }
    let uses = names.found;
    out.insert(
        path.clone(),
        Module {
            file: file.to_path_buf(),
            uses,
        },
    );
    for m in mods {
        let name = m.ident.to_string();
        let mut child = path.clone();
        child.push(name.clone());
        match &m.content {
            Some((_, items)) => read_items(items, file, &dir.join(&name), child, out),
            None => {
                let flat = dir.join(format!("{name}.rs"));
                let nested = dir.join(&name).join("mod.rs");
                let child_file = if flat.is_file() { flat } else { nested };
                read_file(&child_file, &dir.join(&name), child, out);
            }
        }
    }
}

/// The module a path names: its longest prefix that is a module.
fn target<'a>(modules: &'a BTreeMap<ModPath, Module>, path: &[String]) -> &'a ModPath {
    (0..=path.len())
        .rev()
        .find_map(|k| modules.get_key_value(&path[..k]).map(|(p, _)| p))
        .expect("the root is a module")
}

/// module → the modules it imports (itself and its own submodules' paths aside).
fn graph(modules: &BTreeMap<ModPath, Module>) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    modules
        .iter()
        .map(|(path, m)| {
            let edges = m
                .uses
                .iter()
                .map(|u| target(modules, u).clone())
                .filter(|t| t != path)
                .collect();
            (path.clone(), edges)
        })
        .collect()
}

fn show(path: &[String]) -> String {
    if path.is_empty() {
        "crate".into()
    } else {
        path.join("::")
    }
}

/// A cycle in the graph, if there is one.
fn find_cycle(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Option<Vec<ModPath>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &ModPath,
        graph: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        marks: &mut BTreeMap<ModPath, Mark>,
        stack: &mut Vec<ModPath>,
    ) -> Option<Vec<ModPath>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack.iter().position(|n| n == node).expect("on the stack");
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Fails on a cycle and on imports through the crate root.
fn check_acyclic(modules: &BTreeMap<ModPath, Module>) {
    for (path, m) in modules {
        for u in &m.uses {
            if !path.is_empty() && target(modules, u).is_empty() {
                panic!(
                    "{} ({}) imports {} through the crate root: import it from the module \
                     that defines it",
                    show(path),
                    m.file.display(),
                    show(u)
                );
            }
        }
    }
    let mut g = graph(modules);
    // The crate root only declares and re-exports the modules.
    g.remove(&Vec::new());
    if let Some(cycle) = find_cycle(&g) {
        let names: Vec<String> = cycle.iter().map(|p| show(p)).collect();
        panic!("import cycle: {}", names.join(" -> "));
    }
}

/// DESIGN.md's layer table: the rows `| N | module, module | ... |` after the heading
/// `### Layers`, as module → layer.
fn design_layers() -> BTreeMap<String, usize> {
    let design = std::fs::read_to_string(repo().join("DESIGN.md")).expect("DESIGN.md");
    let section = design
        .split("### Layers")
        .nth(1)
        .expect("DESIGN.md has a `### Layers` section");
    let mut layers = BTreeMap::new();
    for line in section.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Ok(layer) = cells[1].parse::<usize>() else {
            continue;
        };
        for module in cells[2].split(',') {
            let module = module.trim().trim_matches('`');
            layers.insert(module.to_string(), layer);
        }
    }
    assert!(!layers.is_empty(), "DESIGN.md's layer table has no rows");
    layers
}

#[test]
fn the_runtime_has_no_import_cycle() {
    check_acyclic(&read_crate(&repo().join("src/lib.rs")));
}

#[test]
fn the_command_line_has_no_import_cycle() {
    check_acyclic(&read_crate(&repo().join("cli/src/lib.rs")));
}

#[test]
fn each_runtime_module_imports_only_lower_layers() {
    let layers = design_layers();
    let modules = read_crate(&repo().join("src/lib.rs"));
    let layer_of = |path: &ModPath| -> usize {
        let top = &path[0];
        *layers.get(top).unwrap_or_else(|| {
            panic!("module {top} is not in DESIGN.md's layer table: give it its layer")
        })
    };
    let mut seen = BTreeSet::new();
    for (path, edges) in graph(&modules) {
        if path.is_empty() {
            continue;
        }
        seen.insert(path[0].clone());
        for to in edges {
            if to.is_empty() || to[0] == path[0] {
                continue;
            }
            assert!(
                layer_of(&to) < layer_of(&path),
                "{} (layer {}) imports {} (layer {}): a module may import only lower layers \
                 (DESIGN.md, Layers)",
                show(&path),
                layer_of(&path),
                show(&to),
                layer_of(&to)
            );
        }
    }
    let listed: BTreeSet<String> = layers.keys().cloned().collect();
    assert_eq!(
        listed, seen,
        "DESIGN.md's layer table and the crate's top-level modules differ"
    );
}

/// The checker itself finds what it must: a cycle, a layer violation, an import through
/// the root (so that the tests above cannot pass vacuously).
#[test]
fn the_checker_finds_cycles_and_root_imports() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("lib.rs", "pub mod a;\npub mod b;\npub use a::A;\n");
    write("a.rs", "use crate::b::B;\npub struct A(B);\n");
    write("b.rs", "pub struct B;\nfn f() -> super::a::A { todo!() }\n");
    let modules = read_crate(&dir.path().join("lib.rs"));
    let cycle = find_cycle(
        &graph(&modules)
            .into_iter()
            .filter(|(p, _)| !p.is_empty())
            .collect(),
    );
    assert!(cycle.is_some(), "a -> b -> a is a cycle");

    write("b.rs", "pub struct B;\nfn f() -> crate::A { todo!() }\n");
    let modules = read_crate(&dir.path().join("lib.rs"));
    let through_root = std::panic::catch_unwind(|| check_acyclic(&modules));
    assert!(through_root.is_err(), "b imports A through the crate root");

    write("b.rs", "pub struct B;\n");
    let modules = read_crate(&dir.path().join("lib.rs"));
    check_acyclic(&modules);
    let edges = graph(&modules);
    assert!(edges[&vec!["a".to_string()]].contains(&vec!["b".to_string()]));
}
