//! `protoc` for build scripts: compiles `.proto` files to a `FileDescriptorSet` with protox.
//!
//! Understands the part of protoc's command line that code generators such as prost-build use:
//! `-I`/`--proto_path` (also `-IDIR` and `--proto_path=DIR`), `-o`/`--descriptor_set_out`,
//! `--include_imports`, `--include_source_info`, and the files. Anything else (a `--*_out`
//! plugin output, say) is refused with a message rather than ignored, so a caller that needs
//! real protoc finds out at once.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Default, PartialEq)]
struct Args {
    includes: Vec<PathBuf>,
    output: Option<PathBuf>,
    include_imports: bool,
    include_source_info: bool,
    files: Vec<PathBuf>,
    version: bool,
}

fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
    let mut out = Args::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy().into_owned();
        let mut value = |flag: &str| -> Result<PathBuf, String> {
            args.next()
                .map(PathBuf::from)
                .ok_or_else(|| format!("Missing value for flag: {flag}"))
        };
        match text.as_str() {
            "--include_imports" => out.include_imports = true,
            "--include_source_info" => out.include_source_info = true,
            // protox accepts proto3 `optional` without being asked.
            "--experimental_allow_proto3_optional" => {}
            "--version" => out.version = true,
            "-I" | "--proto_path" => out.includes.push(value(&text)?),
            "-o" | "--descriptor_set_out" => out.output = Some(value(&text)?),
            _ => {
                if let Some(dir) = text.strip_prefix("--proto_path=") {
                    out.includes.push(dir.into());
                } else if let Some(file) = text.strip_prefix("--descriptor_set_out=") {
                    out.output = Some(file.into());
                } else if let Some(dir) = text.strip_prefix("-I") {
                    out.includes.push(dir.into());
                } else if let Some(file) = text.strip_prefix("-o") {
                    out.output = Some(file.into());
                } else if text.starts_with('-') {
                    return Err(format!(
                        "Unknown flag: {text} (this protoc is protox: it writes descriptor sets only)"
                    ));
                } else {
                    out.files.push(arg.into());
                }
            }
        }
    }
    if out.includes.is_empty() {
        out.includes.push(".".into());
    }
    Ok(out)
}

fn run(args: Args) -> Result<(), String> {
    if args.version {
        println!("protox (standing in for protoc)");
        return Ok(());
    }
    if args.files.is_empty() {
        return Err("Missing input file.".into());
    }
    let mut compiler = protox::Compiler::new(&args.includes).map_err(|e| e.to_string())?;
    compiler.include_imports(args.include_imports);
    compiler.include_source_info(args.include_source_info);
    for file in &args.files {
        compiler
            .open_file(file)
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    if let Some(output) = &args.output {
        std::fs::write(output, compiler.encode_file_descriptor_set())
            .map_err(|e| format!("{}: {e}", output.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match parse(std::env::args_os().skip(1)).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse(list.iter().map(OsString::from))
    }

    #[test]
    fn reads_prost_builds_command_line() {
        let parsed = args(&[
            "--include_imports",
            "--include_source_info",
            "-o",
            "/tmp/set",
            "-I",
            "proto",
            "--proto_path=more",
            "-Ithird",
            "a.proto",
            "b.proto",
        ])
        .unwrap();
        assert_eq!(
            parsed,
            Args {
                includes: vec!["proto".into(), "more".into(), "third".into()],
                output: Some("/tmp/set".into()),
                include_imports: true,
                include_source_info: true,
                files: vec!["a.proto".into(), "b.proto".into()],
                version: false,
            }
        );
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        assert!(args(&["--rust_out=x", "a.proto"])
            .unwrap_err()
            .contains("--rust_out"));
        assert!(args(&["-o"]).unwrap_err().contains("Missing value"));
        assert_eq!(
            args(&["a.proto"]).unwrap().includes,
            vec![PathBuf::from(".")]
        );
    }
}
