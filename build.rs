//! Gives the shared library its SONAME, so that programs linked against `liblethe.so` record
//! `liblethe.so.<major>` and keep working across compatible updates.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");
    let target = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target == "linux" || target == "android" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liblethe.so.{major}");
    }
}
