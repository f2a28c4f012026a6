#!/usr/bin/env bash
# GitHub-hosted runners only (called by `make kind-ci-disk` in .github/workflows/e2e-kind.yml):
# remove preinstalled toolchains the run does not use, so the step images, their copies in the
# kind node and the Kubeflow/KServe images fit on the disk. Refuses to run anywhere else.
source "$(dirname "$0")/lib.sh"
[[ ${GITHUB_ACTIONS:-} == true && ${CI:-} == true ]] \
    || die "only for GitHub-hosted CI runners (GITHUB_ACTIONS=true, CI=true); it deletes toolchains under /usr and /opt"
df -h /
sudo rm -rf /usr/share/dotnet /usr/local/lib/android /opt/ghc /usr/local/.ghcup /opt/hostedtoolcache/CodeQL
docker image prune --all --force >/dev/null
df -h /
