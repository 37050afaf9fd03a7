//! Extracts the protobuf wire schema of the Kubernetes API types (message names, field tags and
//! types) from the `k8s-pb` crate's prost bindings, so the server can decode protobuf request
//! bodies (`application/vnd.kubernetes.protobuf`) without a `protoc` or `.proto` files. The
//! output is a compact text table in `OUT_DIR/k8s_wire.txt`, read by `src/protobuf.rs`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn k8s_pb_src() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let target = std::env::var("TARGET").expect("TARGET");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
            &target,
        ])
        .current_dir(&dir)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let pkg = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "k8s-pb"))
        .expect("k8s-pb is a build dependency");
    let manifest = PathBuf::from(pkg["manifest_path"].as_str().expect("manifest_path"));
    manifest.parent().expect("package dir").join("src")
}

/// Splits a type into its path tokens, dropping prost/std wrappers.
fn message_type(ty: &str, module: &[String]) -> Option<String> {
    const WRAPPERS: &[&str] = &[
        "::core::option::Option",
        "::prost::alloc::vec::Vec",
        "::prost::alloc::boxed::Box",
        "::prost::alloc::collections::BTreeMap",
        "::prost::alloc::string::String",
        "Option",
        "Vec",
        "Box",
        "i32",
        "i64",
        "bool",
        "f64",
        "u8",
    ];
    let cleaned: String = ty.chars().filter(|c| !c.is_whitespace()).collect();
    let tok = cleaned
        .split(['<', '>', ','])
        .rfind(|t| !t.is_empty() && !WRAPPERS.contains(t))?
        .to_string();
    let mut path: Vec<String> = module.to_vec();
    let mut segs: Vec<&str> = tok.split("::").collect();
    if segs.first() == Some(&"") {
        segs.remove(0);
    }
    if segs.len() == 1 {
        path.push(segs[0].to_string());
        return Some(path.join("."));
    }
    for s in segs {
        if s == "super" {
            path.pop();
        } else if s != "self" {
            path.push(s.to_string());
        }
    }
    Some(path.join("."))
}

fn parse_file(file: &Path, module: &[String], out: &mut String) {
    let text = std::fs::read_to_string(file).expect("read k8s-pb source");
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim();
        if let Some(rest) = l.strip_prefix("pub struct ") {
            let name = rest.trim_end_matches('{').trim();
            if lines[i].starts_with("pub struct") && l.ends_with('{') {
                let _ = writeln!(out, "M {}.{}", module.join("."), name);
            }
        } else if let Some(attr) = l
            .strip_prefix("#[prost(")
            .and_then(|a| a.strip_suffix(")]"))
            && lines[i].starts_with("    #[prost(")
        {
            // The declaration follows, possibly over several lines, up to the closing `,`.
            let mut decl = String::new();
            let mut j = i + 1;
            let mut depth = 0i32;
            while j < lines.len() {
                let t = lines[j].trim();
                decl.push_str(t);
                depth += t.matches('<').count() as i32 - t.matches('>').count() as i32;
                if depth <= 0 && t.ends_with(',') {
                    break;
                }
                j += 1;
            }
            i = j;
            let Some((name, ty)) = decl.strip_prefix("pub ").and_then(|d| d.split_once(':')) else {
                i += 1;
                continue;
            };
            let name = name.trim().trim_start_matches("r#");
            let ty = ty.trim_end_matches(',');
            let tag = attr
                .split(',')
                .map(str::trim)
                .find_map(|p| p.strip_prefix("tag = \"").and_then(|t| t.strip_suffix('"')))
                .expect("every prost field has a tag");
            let repeated = attr.contains("repeated");
            let kind = attr.split(',').next().unwrap_or("").trim();
            let line = if let Some(m) = attr
                .strip_prefix("btree_map = \"")
                .or_else(|| attr.strip_prefix("map = \""))
            {
                let kv = m.split('"').next().unwrap_or("");
                let value = kv.split(',').nth(1).unwrap_or("").trim();
                let target = if value == "message" {
                    message_type(ty, module).unwrap_or_default()
                } else {
                    "-".into()
                };
                format!("F {tag} {name} map:{value} 0 {target}")
            } else if kind == "message" {
                let target = message_type(ty, module).unwrap_or_default();
                format!("F {tag} {name} message {} {target}", u8::from(repeated))
            } else {
                let k = kind.split('=').next().unwrap_or(kind).trim();
                format!("F {tag} {name} {k} {} -", u8::from(repeated))
            };
            let _ = writeln!(out, "{line}");
        }
        i += 1;
    }
}

fn walk(dir: &Path, module: &mut Vec<String>, out: &mut String) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            module.push(e.file_name().to_string_lossy().into_owned());
            walk(&p, module, out);
            module.pop();
        } else if p.file_name().is_some_and(|n| n == "mod.rs") {
            parse_file(&p, module, out);
        }
    }
}

fn main() {
    let src = k8s_pb_src();
    let mut out = String::new();
    walk(&src, &mut Vec::new(), &mut out);
    assert!(
        out.contains("M api.core.v1.ConfigMap"),
        "k8s-pb layout not recognised under {}",
        src.display()
    );
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("k8s_wire.txt");
    std::fs::write(dest, out).expect("write k8s_wire.txt");
    println!("cargo:rerun-if-changed=build.rs");
}
