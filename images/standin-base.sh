#!/usr/bin/env bash
# Build the stand-in base image for `make image-test`: an Ubuntu 24.04 (noble) minbase root filesystem made by
# mmdebstrap from the distribution's own packages, imported with buildah. It stands in for
# nvidia/cuda:13.0.0-base-ubuntu24.04 (which cannot be pulled here): the same distribution, so the same python3.12
# packages and glibc 2.39 that the lock targets, and the same uid-1000 user `ubuntu` (group `ubuntu`, gid 1000)
# that Docker Hub's ubuntu:24.04 carries, so a Dockerfile that clashes with it fails here as it would there.
# What it lacks is the CUDA runtime and driver plumbing of the NVIDIA base (nothing a CPU run needs).
#
# Usage: images/standin-base.sh IMAGE_NAME WORKDIR      (as root; needs buildah and mmdebstrap)
set -euo pipefail
name=${1:?image name}
work=${2:?work directory (outside the repository)}
storage=(--storage-driver vfs)

if buildah "${storage[@]}" inspect --type image "$name" >/dev/null 2>&1; then
    echo "stand-in base $name exists"
    exit 0
fi
mkdir -p "$work"
# Ubuntu's archive keyring, taken from Debian's ubuntu-keyring package (extracted, not installed).
keyring=$work/keyring/usr/share/keyrings/ubuntu-archive-keyring.gpg
if [ ! -s "$keyring" ]; then
    rm -rf "$work/keyring"
    mmdebstrap --quiet --variant=extract --include=ubuntu-keyring trixie "$work/keyring"
fi
rm -f "$work/noble.tar"
mmdebstrap --quiet --variant=minbase --components="main restricted universe multiverse" --keyring="$keyring" --include=apt,ca-certificates \
    --customize-hook='chroot "$1" useradd --uid 1000 --user-group --create-home --shell /bin/bash ubuntu' \
    noble "$work/noble.tar"
ctr=$(buildah "${storage[@]}" from scratch)
trap 'buildah "${storage[@]}" rm "$ctr" >/dev/null' EXIT
buildah "${storage[@]}" add --quiet "$ctr" "$work/noble.tar" / >/dev/null
buildah "${storage[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash "$ctr"
echo "stand-in base $name, uid 1000: $(buildah "${storage[@]}" run --isolation chroot "$ctr" -- getent passwd 1000)"
buildah "${storage[@]}" commit --quiet "$ctr" "$name" >/dev/null
rm -f "$work/noble.tar"
