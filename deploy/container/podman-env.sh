# Source this before podman on hosts where its defaults don't run containers:
#   . deploy/container/podman-env.sh
#
# - podman 4.3 gives containers RLIMIT_NOFILE 1048576 and RLIMIT_NPROC 32768; a host whose
#   hard limits are lower (and that lacks CAP_SYS_RESOURCE) refuses with
#   "crun: setrlimit RLIMIT_NOFILE: Operation not permitted". `--ulimit host` does not help
#   in 4.3; limits at or below the hard limits do.
# - crun refuses hybrid cgroup hierarchies ("cgroups in hybrid mode not supported"); runc
#   runs on them.
# It writes a containers.conf with those two settings and points CONTAINERS_CONF at it.
_hg_conf_dir=${XDG_RUNTIME_DIR:-${TMPDIR:-/tmp}}/hushgate-podman
mkdir -p "$_hg_conf_dir"
_hg_nofile=$(ulimit -Hn)
[ "$_hg_nofile" = unlimited ] && _hg_nofile=1048576
_hg_nproc=$(ulimit -Hu)
{ [ "$_hg_nproc" = unlimited ] || [ "$_hg_nproc" -gt 32768 ]; } && _hg_nproc=32768
_hg_runtime=crun
if [ -d /sys/fs/cgroup/unified ] || { [ -d /sys/fs/cgroup/memory ] && [ -f /sys/fs/cgroup/cgroup.controllers ]; }; then
  command -v runc >/dev/null 2>&1 && _hg_runtime=runc
fi
cat > "$_hg_conf_dir/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$_hg_nofile:$_hg_nofile", "nproc=$_hg_nproc:$_hg_nproc"]
[engine]
runtime = "$_hg_runtime"
CONF
export CONTAINERS_CONF="$_hg_conf_dir/containers.conf"
unset _hg_conf_dir _hg_nofile _hg_nproc _hg_runtime
