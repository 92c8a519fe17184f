//! Build script. Does nothing unless the `ros` feature is enabled.
//!
//! With `ros` and ROS 2 Jazzy from the PyPI wheels (scripts/setup_ros.sh, `source .ros/env.sh`),
//! librcl needs CPython symbols at run time (`undefined symbol: PyExc_RuntimeError` from the
//! `*__rosidl_generator_py.so` libraries), so the binaries must link the same libpython as the
//! venv's interpreter. This script asks that interpreter (`$VLM_PYTHON`, else `python3` from
//! PATH) for its libpython and links it with `--no-as-needed`, and bakes rpaths for the venv's
//! `lib/`, the wheels' `ros_*.libs` directories and every `$AMENT_PREFIX_PATH/lib`, so the node
//! runs without LD_LIBRARY_PATH.
//!
//! With a regular ROS 2 install (apt/source) linking libpython is harmless; set
//! `VLM_ROS_LINK_PYTHON=0` to skip it. If no shared libpython is found, a warning is printed and
//! nothing is linked.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_ROS").is_none() {
        return;
    }
    for var in [
        "VLM_PYTHON",
        "VLM_ROS_LINK_PYTHON",
        "VIRTUAL_ENV",
        "AMENT_PREFIX_PATH",
        "ROS_DISTRO",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if env::var("VLM_ROS_LINK_PYTHON").is_ok_and(|v| v == "0") {
        return;
    }
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }

    let python = env::var("VLM_PYTHON")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "python3".to_string());
    let Some(info) = python_info(&python) else {
        println!(
            "cargo:warning=vlm_perception: cannot query `{python}` for its libpython; not linking \
             libpython (set VLM_PYTHON, or source .ros/env.sh)"
        );
        return;
    };

    let libdir = PathBuf::from(&info.libdir);
    let so = libdir.join(format!("lib{}.so", info.lib));
    if !so.exists() {
        println!(
            "cargo:warning=vlm_perception: {} not found; not linking libpython. With the ROS 2 \
             PyPI wheels the node then fails at run time with `undefined symbol: Py...` unless \
             LD_PRELOAD names libpython",
            so.display()
        );
        return;
    }
    println!("cargo:rustc-link-search=native={}", libdir.display());
    // --no-as-needed: nothing in our own objects references libpython; librcl does, at run time.
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-l{}", info.lib);
    println!("cargo:rustc-link-arg=-Wl,--as-needed");

    // rpaths (DT_RPATH, so they also apply to the libraries' own dependencies).
    let mut rpaths: Vec<PathBuf> = vec![libdir];
    let prefix_lib = Path::new(&info.prefix).join("lib");
    if prefix_lib.is_dir() {
        rpaths.push(prefix_lib);
    }
    if let Ok(entries) = std::fs::read_dir(&info.site) {
        let mut libs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("ros_") && n.ends_with(".libs"))
            })
            .collect();
        libs.sort();
        rpaths.extend(libs);
    }
    if let Some(paths) = env::var_os("AMENT_PREFIX_PATH") {
        for p in env::split_paths(&paths) {
            let lib = p.join("lib");
            if lib.is_dir() {
                rpaths.push(lib);
            }
        }
    }
    let mut seen = Vec::new();
    rpaths.retain(|p| {
        if seen.contains(p) {
            false
        } else {
            seen.push(p.clone());
            true
        }
    });
    println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
    for p in rpaths {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", p.display());
    }
}

struct PythonInfo {
    /// sysconfig LIBDIR: where libpython3.X.so lives.
    libdir: String,
    /// Library name without `lib`/`.so`, e.g. `python3.11`.
    lib: String,
    /// sys.prefix (the venv root when run from a venv).
    prefix: String,
    /// site-packages (platlib), where the wheels put their `ros_*.libs` directories.
    site: String,
}

fn python_info(python: &str) -> Option<PythonInfo> {
    const SCRIPT: &str = "import sys, sysconfig\n\
        v = sysconfig.get_config_var\n\
        print(v('LIBDIR'))\n\
        print('python' + (v('LDVERSION') or '%d.%d' % sys.version_info[:2]))\n\
        print(sys.prefix)\n\
        print(sysconfig.get_paths()['platlib'])\n";
    let out = Command::new(python).arg("-c").arg(SCRIPT).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let mut lines = text.lines().map(|l| l.trim().to_string());
    Some(PythonInfo {
        libdir: lines.next().filter(|s| !s.is_empty() && s != "None")?,
        lib: lines.next()?,
        prefix: lines.next()?,
        site: lines.next()?,
    })
}
