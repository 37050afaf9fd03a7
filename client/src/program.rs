//! Locating the programs `keelson up` and the benchmarks start.

use std::path::{Path, PathBuf};

/// Where `program` is: itself when it names a path, else the first match in `PATH`.
pub fn find(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_by_path_or_in_path() {
        assert_eq!(find(Path::new("sh")).map(|p| p.is_file()), Some(true));
        assert_eq!(find(Path::new("/bin/sh")), Some(PathBuf::from("/bin/sh")));
        assert_eq!(find(Path::new("/nonexistent/sh")), None);
        assert_eq!(find(Path::new("no-such-program-anywhere")), None);
    }
}
