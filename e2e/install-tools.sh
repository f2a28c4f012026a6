#!/usr/bin/env bash
# Install the pinned kind and kubectl (e2e/versions.env) into local_runs/kind/bin, which the other
# e2e scripts put first on PATH (called by `make kind-tools`). Each binary is checked against
# the SHA-256 its project publishes beside it. Needs curl; Linux or macOS, amd64 or arm64.
source "$(dirname "$0")/lib.sh"
need curl

os=$(uname -s | tr '[:upper:]' '[:lower:]')
case $(uname -m) in
    x86_64 | amd64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) die "unsupported machine $(uname -m)" ;;
esac
mkdir -p "$TOOLS_DIR"

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1; else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

install_binary() {  # <name> <version> <url> <url of its sha256>
    local name=$1 version=$2 url=$3 sum_url=$4 target=$TOOLS_DIR/$1 expected
    if [[ -x $target && -f $target.version && $(cat "$target.version") == "$version" ]]; then
        log "$name $version already in $TOOLS_DIR"
        return
    fi
    log "downloading $name $version"
    curl -fsSL --retry 3 -o "$target.download" "$url"
    expected=$(curl -fsSL --retry 3 "$sum_url" | cut -d' ' -f1)
    [[ $(sha256_of "$target.download") == "$expected" ]] || die "$name: checksum mismatch for $url"
    chmod +x "$target.download"
    mv "$target.download" "$target"
    echo "$version" >"$target.version"
}

kind_url=https://github.com/kubernetes-sigs/kind/releases/download/$KIND_VERSION/kind-$os-$arch
install_binary kind "$KIND_VERSION" "$kind_url" "$kind_url.sha256sum"
kubectl_url=https://dl.k8s.io/release/$KUBECTL_VERSION/bin/$os/$arch/kubectl
install_binary kubectl "$KUBECTL_VERSION" "$kubectl_url" "$kubectl_url.sha256"

"$TOOLS_DIR/kind" version
"$TOOLS_DIR/kubectl" version --client
