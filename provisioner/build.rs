//! Finds Docker's default seccomp profile, the base of every tenant's
//! filter, and copies it into OUT_DIR for `src/seccomp.rs` to embed.
//! Debian ships Docker's own file in golang-github-docker-docker-dev; a
//! newer copy can be named with SOTOLITO_DOCKER_SECCOMP_PROFILE.

use std::path::PathBuf;

const ENV: &str = "SOTOLITO_DOCKER_SECCOMP_PROFILE";
const DEBIAN: &str = "/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json";

fn main() {
    println!("cargo:rerun-if-env-changed={ENV}");
    let src = std::env::var_os(ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEBIAN));
    println!("cargo:rerun-if-changed={}", src.display());
    let bytes = match std::fs::read(&src) {
        Ok(b) => b,
        Err(e) => panic!(
            "Docker's default seccomp profile {}: {e} (apt-get install golang-github-docker-docker-dev, \
             or set {ENV} to a copy of moby's profiles/seccomp/default.json)",
            src.display()
        ),
    };
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("docker-default.json"), bytes)
        .expect("write OUT_DIR/docker-default.json");
}
