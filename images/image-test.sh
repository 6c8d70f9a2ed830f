#!/usr/bin/env bash
# make image-test: build images/Dockerfile for real with buildah, from a stand-in for its Ubuntu 24.04 CUDA base
# (images/standin-base.sh), then run the image as a pod would: uid 1000, /app read-only, empty writable /cache
# and /tmp, outputs on a mounted /data (images/smoke.py). Then, as root, fail if uid 1000 wrote anywhere but the
# mounted places. Prints the image's size and the time each part took.
#
# Needs root, buildah and mmdebstrap (.ci/run installs them), PyPI and the distribution's archive.
# Storage: vfs (no overlay here), so every layer is a full copy: about 25 GB of disk at the peak. Build outputs
# live in $IMAGE_TEST_WORK (default /var/tmp/rlvsdistill-image-test) and buildah's storage, never in the repo.
# The built image is removed at the end unless IMAGE_TEST_KEEP=1 (the small stand-in base is kept).
# A TLS-intercepting proxy: the build trusts what the host trusts (CA_BUNDLE, default the host's bundle).
set -euo pipefail
cd "$(dirname "$0")/.."

t0=$(date +%s)
buildah=(buildah --storage-driver vfs)
work=${IMAGE_TEST_WORK:-/var/tmp/rlvsdistill-image-test}
base=localhost/rlvsdistill-base:noble-standin
image=localhost/rlvsdistill-image-test
tag=$image:$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)    # the tags `make image` gives
version_tag=$image:$(grep -m1 '^version' pyproject.toml | cut -d'"' -f2)
ca=${CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
[ -s "$ca" ] || ca=

images/standin-base.sh "$base" "$work/base"
t_base=$(date +%s)
make --no-print-directory image BUILDER=buildah BUILDAH="${buildah[*]}" \
    BUILDAH_BUD_FLAGS="--layers=false --isolation chroot" BASE="$base" IMAGE="$image" CA_BUNDLE="$ca"
t_build=$(date +%s)

ctr=$("${buildah[@]}" from --quiet "$tag")
cleanup() {
    "${buildah[@]}" rm "$ctr" >/dev/null || true
    if [ "${IMAGE_TEST_KEEP:-0}" != 1 ]; then
        "${buildah[@]}" rmi "$tag" "$version_tag" >/dev/null || true
    fi
}
trap cleanup EXIT

# The pod's volumes: emptyDirs (world-writable) at /cache and /tmp, the data volume owned by the pod's fsGroup.
run_dir=$work/run
rm -rf "$run_dir"
mkdir -p "$run_dir"/{cache,tmp,data}
chmod 1777 "$run_dir/cache" "$run_dir/tmp"
chown 1000:1000 "$run_dir/data"
mounts=(-v "$run_dir/cache:/cache" -v "$run_dir/tmp:/tmp" -v "$run_dir/data:/data" -v "$PWD/images:/checks:ro")
"${buildah[@]}" run --isolation chroot --user 1000:1000 "${mounts[@]}" "$ctr" -- \
    python /checks/smoke.py /checks/requirements.lock

# Anything uid 1000 wrote outside the mounted places would fail on a pod's read-only root file system.
stray=$("${buildah[@]}" run --isolation chroot --user 0:0 "$ctr" -- find / -path /proc -prune -o -path /sys -prune \
    -o -path /dev -prune -o -path /cache -prune -o -path /tmp -prune -o -path /data -prune -o -path /checks -prune \
    -o -user 1000 -print)
if [ -n "$stray" ]; then
    echo "image-test: FAILED: uid 1000 wrote outside /cache, /tmp and /data:"; echo "$stray"; exit 1
fi
echo "image-test: caches written under /cache: $(cd "$run_dir/cache" && find . -mindepth 1 -maxdepth 2 -type d | sort | tr '\n' ' ')"
t_end=$(date +%s)

size=$("${buildah[@]}" images --format '{{.Size}}' "$tag" | sed -n 1p)  # sed reads it all: no SIGPIPE under pipefail
echo "image-test: PASS: $tag, $size; base $((t_base - t0)) s, build $((t_build - t_base)) s," \
    "checks $((t_end - t_build)) s, total $((t_end - t0)) s"
