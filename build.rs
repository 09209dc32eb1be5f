//! Gives the shared library its SONAME, so that programs linked against `liblethe.so` record
//! `liblethe.so.<ABI>` and keep working across compatible updates. The ABI is the major version,
//! or `0.<minor>` before 1.0, where a minor version may break compatibility (as in Cargo).

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").expect("cargo sets the version");
    let abi = if major == "0" {
        format!("0.{minor}")
    } else {
        major
    };
    let target = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target == "linux" || target == "android" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liblethe.so.{abi}");
    }
}
