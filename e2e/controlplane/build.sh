#!/usr/bin/env bash
# Builds the lab's control plane (etcd, kube-apiserver, kube-controller-manager,
# kubectl), cnitool, the reference CNI runtime, and helm (for the chart tests) from the
# Go modules pinned beside this script, into a cache keyed by
# version. A cache hit costs nothing; a cold build takes a while on 2 cores and
# shows its progress. Prints the cache directory on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if ! command -v go >/dev/null 2>&1; then
  echo "switchyard: the lab builds Kubernetes from Go modules and needs the 'go' toolchain (1.26 or newer) on PATH; install it (e.g. 'apt-get install golang-go' or from go.dev) and run again" >&2
  exit 127
fi

# The versions come from the pinned modules, so go.mod is the single source.
k8s=$(sed -n 's|^[[:space:]]*k8s.io/kubernetes v\([0-9.]*\).*|\1|p' "$here/k8s/go.mod" | head -n1)
cni=$(sed -n 's|.*github.com/containernetworking/cni v\([0-9.]*\).*|\1|p' "$here/cni/go.mod" | head -n1)
helm=$(sed -n 's|.*helm.sh/helm/v3 v\([0-9.]*\).*|\1|p' "$here/helm/go.mod" | head -n1)
etcd=$(sed -n 's|.*go.etcd.io/etcd/server/v3 v\([0-9.]*\).*|\1|p' "$here/etcd/go.mod" | head -n1)
# CoreDNS (the incumbent DNS for `switchyard-lab bench --compare`) has its own module, so its
# dependencies do not move the control plane's; it lands in a versioned subdirectory.
coredns=$(sed -n 's|.*github.com/coredns/coredns v\([0-9.]*\).*|\1|p' "$here/coredns/go.mod" | head -n1)
[ -n "$coredns" ] || { echo "switchyard: cannot read the pinned CoreDNS version from $here/coredns/go.mod" >&2; exit 1; }
[ -n "$k8s" ] && [ -n "$etcd" ] && [ -n "$helm" ] || { echo "switchyard: cannot read pinned versions from $here/{k8s,etcd,helm}/go.mod" >&2; exit 1; }
minor=$(cut -d. -f2 <<<"$k8s")

out=${SWITCHYARD_CONTROLPLANE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/k8s-v$k8s-etcd-v$etcd-cni-v$cni}
# helm lives in its own versioned subdirectory, so bumping helm does not rebuild the rest
# (and the control-plane directory name, which other tools may know, stays the same).
bins=(etcd kube-apiserver kube-controller-manager kubectl cnitool "helm-v$helm/helm")
bins+=(kube-proxy "coredns-v$coredns/coredns")
missing=()
for b in "${bins[@]}"; do [ -x "$out/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "$out"
  exit 0
fi

export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$out"
start=$(date +%s)
step() { echo "switchyard: [$(( $(date +%s) - start ))s] $*" >&2; }

need() { printf '%s\n' "${missing[@]}" | grep -qx "$1"; }

if need etcd; then
  step "building etcd v$etcd"
  (cd "$here/etcd" && go build -trimpath -ldflags="-s -w" -o "$out/etcd.tmp" . ) && mv "$out/etcd.tmp" "$out/etcd"
fi

if need "helm-v$helm/helm"; then
  step "building helm v$helm (for the chart tests)"
  mkdir -p "$out/helm-v$helm"
  # As helm's Makefile does: the Kubernetes version `helm template` and `helm lint` assume is
  # that of the client-go it links (v0.37 -> 1.37), not the built-in 1.20.
  kminor=$(sed -n 's|.*k8s.io/client-go v0\.\([0-9]*\)\..*|\1|p' "$here/helm/go.mod" | head -n1)
  hld="-s -w -X helm.sh/helm/v3/internal/version.version=v$helm"
  for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    hld+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$kminor"
  done
  (cd "$here/helm" && go build -trimpath -ldflags="$hld" \
      -o "$out/helm-v$helm/helm.tmp" helm.sh/helm/v3/cmd/helm) && mv "$out/helm-v$helm/helm.tmp" "$out/helm-v$helm/helm"
fi

if need cnitool; then
  step "building cnitool v$cni (the reference CNI runtime)"
  (cd "$here/cni" && go build -trimpath -ldflags="-s -w" -o "$out/cnitool.tmp" github.com/containernetworking/cni/cnitool) && mv "$out/cnitool.tmp" "$out/cnitool"
fi

ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $p.gitVersion=v$k8s -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
for b in kube-apiserver kube-controller-manager kubectl kube-proxy; do
  need "$b" || continue
  step "building $b v$k8s"
  (cd "$here/k8s" && go build -trimpath -tags=selinux,notest,grpcnotrace -ldflags="$ld" \
      -o "$out/$b.tmp" "k8s.io/kubernetes/cmd/$b") && mv "$out/$b.tmp" "$out/$b"
done
if need "coredns-v$coredns/coredns"; then
  step "building coredns v$coredns (the incumbent DNS for bench --compare)"
  mkdir -p "$out/coredns-v$coredns"
  (cd "$here/coredns" && go build -trimpath -ldflags="-s -w" \
      -o "$out/coredns-v$coredns/coredns.tmp" github.com/coredns/coredns) && mv "$out/coredns-v$coredns/coredns.tmp" "$out/coredns-v$coredns/coredns"
fi
step "control plane ready in $out"
echo "$out"
