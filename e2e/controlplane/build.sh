#!/usr/bin/env bash
# Builds the Go programs the lab uses from the modules pinned beside this script, into a cache
# keyed by version, and prints the cache directory on its last line. Only what is asked for is
# built; a cache hit costs nothing.
#
#   build.sh [GROUP...]     GROUP: core (the default), cnitool, helm, incumbents, nodes,
#                           conformance, argocd, all
#
#   core        etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl:
#               what `switchyard-lab up` and every lab test need
#   cnitool     the reference CNI runtime (one lab test drives switchyard-cni with it)
#   helm        helm, for the chart tests
#   incumbents  kube-proxy and CoreDNS, for `switchyard-lab bench --compare`
#   nodes       kubelet, containerd (with its runc shim and ctr), runc and crane: the real
#               nodes of `switchyard-lab up --real` (runc needs cgo and libseccomp-dev)
#   conformance the upstream e2e suite (e2e.test, compiled from the pinned Kubernetes tests),
#               agnhost, the test image its networking tests run, and CoreDNS (the image
#               carries it at /coredns, as upstream's does)
#   argocd      Argo CD's multi-call binary (application controller, repo server, git askpass),
#               for the GitOps test
#
# A cold build of `core` takes several minutes on 2 cores; it says what it builds and, every
# 30 seconds, that it is still at it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if ! command -v go >/dev/null 2>&1; then
  echo "switchyard: the lab builds Kubernetes from Go modules and needs the 'go' toolchain (1.26 or newer) on PATH; install it (e.g. 'apt-get install golang-go' or from go.dev) and run again" >&2
  exit 127
fi

# The versions come from the pinned modules, so go.mod is the single source.
pinned() { sed -n "s|.*$1 v\([0-9.]*\).*|\1|p" "$here/$2/go.mod" | head -n1; }
k8s=$(pinned 'k8s.io/kubernetes' k8s)
cni=$(pinned 'github.com/containernetworking/cni' cni)
helm=$(pinned 'helm.sh/helm/v3' helm)
etcd=$(pinned 'go.etcd.io/etcd/server/v3' etcd)
coredns=$(pinned 'github.com/coredns/coredns' coredns)
containerd=$(pinned 'github.com/containerd/containerd/v2' containerd)
runc=$(pinned 'github.com/opencontainers/runc' runc)
crane=$(pinned 'github.com/google/go-containerregistry' crane)
argocd=$(pinned 'github.com/argoproj/argo-cd/v3' argocd)
for v in k8s cni helm etcd coredns containerd runc crane argocd; do
  [ -n "${!v}" ] || { echo "switchyard: cannot read the pinned $v version from $here/*/go.mod" >&2; exit 1; }
done
minor=$(cut -d. -f2 <<<"$k8s")

out=${SWITCHYARD_CONTROLPLANE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/k8s-v$k8s-etcd-v$etcd-cni-v$cni}

# The binaries of each group, as paths below $out (helm and CoreDNS in versioned
# subdirectories, so bumping them rebuilds nothing else).
declare -A group=(
  [core]="etcd kube-apiserver kube-controller-manager kube-scheduler kubectl"
  [cnitool]="cnitool"
  [helm]="helm-v$helm/helm"
  [incumbents]="kube-proxy coredns-v$coredns/coredns"
  [nodes]="kubelet containerd-v$containerd/containerd containerd-v$containerd/containerd-shim-runc-v2 containerd-v$containerd/ctr runc-v$runc/runc crane-v$crane/crane"
  [conformance]="e2e.test agnhost coredns-v$coredns/coredns"
  [argocd]="argocd-v$argocd/argocd argocd-v$argocd/crds/application-crd.yaml argocd-v$argocd/crds/appproject-crd.yaml"
)
asked=("$@")
[ ${#asked[@]} -gt 0 ] || asked=(core)
[ "${asked[*]}" != all ] || asked=(core cnitool helm incumbents nodes conformance argocd)
missing=()
for g in "${asked[@]}"; do
  [ -n "${group[$g]:-}" ] || { echo "switchyard: build.sh: unknown group '$g' (core, cnitool, helm, incumbents, nodes, conformance, argocd, all)" >&2; exit 2; }
  for b in ${group[$g]}; do [ -e "$out/$b" ] || missing+=("$b"); done
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "$out"
  exit 0
fi

mkdir -p "$out"
start=$(date +%s)
say() { echo "switchyard: [$(( $(date +%s) - start ))s] $*" >&2; }
# One build at a time per cache (tests run in parallel and may ask for the same program);
# whoever waited looks again, since the first may have built what it needs.
exec 9>"$out/.build.lock"
if ! flock -n 9; then
  say "waiting for another build into $out"
  flock 9
  still=()
  for b in "${missing[@]}"; do [ -e "$out/$b" ] || still+=("$b"); done
  missing=("${still[@]}")
  if [ ${#missing[@]} -eq 0 ]; then
    echo "$out"
    exit 0
  fi
fi

export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
say "building ${#missing[@]} Go program(s) into $out (once; cached afterwards): ${missing[*]}"

# build NAME DIR OUTPUT GO-BUILD-ARGS...: one `go build` in module DIR, with a line every 30 s
# while it runs (module downloads and compiling print nothing for minutes). GO_CMD="test -c"
# compiles a test binary instead.
build() {
  local name=$1 dir=$2 dest=$3
  shift 3
  say "building $name"
  local t0 ticker
  t0=$(date +%s)
  ( while sleep 30; do say "  still building $name ($(( $(date +%s) - t0 ))s)"; done ) &
  ticker=$!
  mkdir -p "$(dirname "$dest")"
  # shellcheck disable=SC2086 # GO_CMD is one or two words
  if (cd "$dir" && go ${GO_CMD:-build} -trimpath -o "$dest.tmp" "$@"); then
    kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true
    mv "$dest.tmp" "$dest"
    say "built $name in $(( $(date +%s) - t0 ))s"
  else
    kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true
    say "building $name failed"
    exit 1
  fi
}
need() { printf '%s\n' "${missing[@]}" | grep -qx "$1"; }

if need etcd; then
  build "etcd v$etcd" "$here/etcd" "$out/etcd" -ldflags="-s -w" .
fi

ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $p.gitVersion=v$k8s -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl kube-proxy kubelet; do
  need "$b" || continue
  build "$b v$k8s" "$here/k8s" "$out/$b" -tags=selinux,notest,grpcnotrace -ldflags="$ld" "k8s.io/kubernetes/cmd/$b"
done

if need agnhost; then
  build "agnhost v$k8s (the upstream e2e tests' pod image)" "$here/k8s" "$out/agnhost" -ldflags="-s -w" k8s.io/kubernetes/test/images/agnhost
fi
if need e2e.test; then
  # A test binary, as the upstream Makefile builds it (the same -X flags, so the suite knows
  # the version it tests).
  GO_CMD="test -c" build "e2e.test v$k8s (the upstream e2e suite, for the conformance runs)" "$here/k8s" "$out/e2e.test" \
    -ldflags="$ld" k8s.io/kubernetes/test/e2e
fi

if need cnitool; then
  build "cnitool v$cni (the reference CNI runtime)" "$here/cni" "$out/cnitool" -ldflags="-s -w" github.com/containernetworking/cni/cnitool
fi

if need "helm-v$helm/helm"; then
  # As helm's Makefile does: the Kubernetes version `helm template` and `helm lint` assume is
  # that of the client-go it links (v0.37 -> 1.37), not the built-in 1.20.
  kminor=$(sed -n 's|.*k8s.io/client-go v0\.\([0-9]*\)\..*|\1|p' "$here/helm/go.mod" | head -n1)
  hld="-s -w -X helm.sh/helm/v3/internal/version.version=v$helm"
  for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    hld+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$kminor"
  done
  build "helm v$helm (for the chart tests)" "$here/helm" "$out/helm-v$helm/helm" -ldflags="$hld" helm.sh/helm/v3/cmd/helm
fi

if need "coredns-v$coredns/coredns"; then
  build "coredns v$coredns (the incumbent DNS for bench --compare)" "$here/coredns" "$out/coredns-v$coredns/coredns" -ldflags="-s -w" github.com/coredns/coredns
fi
for b in containerd containerd-shim-runc-v2 ctr; do
  need "containerd-v$containerd/$b" || continue
  # No btrfs snapshotter (it needs cgo and btrfs headers; the lab uses overlayfs).
  build "$b v$containerd (the real nodes' container runtime)" "$here/containerd" "$out/containerd-v$containerd/$b" -tags=no_btrfs \
    -ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=v$containerd" "github.com/containerd/containerd/v2/cmd/$b"
done

if need "runc-v$runc/runc"; then
  if ! pkg-config --exists libseccomp 2>/dev/null; then
    echo "switchyard: runc is built with seccomp (pods get the runtime's default profile) and needs the Debian packages libseccomp-dev and pkg-config" >&2
    exit 127
  fi
  # cgo: runc's nsenter is C.
  CGO_ENABLED=1 build "runc v$runc (the OCI runtime, with seccomp)" "$here/runc" "$out/runc-v$runc/runc" -tags=seccomp \
    -ldflags="-s -w -X main.version=$runc" github.com/opencontainers/runc
fi

if need "crane-v$crane/crane"; then
  build "crane v$crane (builds the lab's OCI images without a daemon)" "$here/crane" "$out/crane-v$crane/crane" -ldflags="-s -w" github.com/google/go-containerregistry/cmd/crane
fi
if need "argocd-v$argocd/argocd"; then
  # As Argo CD's Makefile does: no cgo, the version stamped into common.
  ald="-s -w -X github.com/argoproj/argo-cd/v3/common.version=$argocd -X github.com/argoproj/argo-cd/v3/common.gitTreeState=clean"
  build "argocd v$argocd (application controller and repo server, for the GitOps test)" "$here/argocd" "$out/argocd-v$argocd/argocd" \
    -ldflags="$ald" github.com/argoproj/argo-cd/v3/cmd
fi
if need "argocd-v$argocd/crds/application-crd.yaml" || need "argocd-v$argocd/crds/appproject-crd.yaml"; then
  # The release's own CRDs (Application, AppProject), from the module it was built from.
  src=$(cd "$here/argocd" && go list -m -f '{{.Dir}}' github.com/argoproj/argo-cd/v3)
  mkdir -p "$out/argocd-v$argocd/crds"
  cp "$src/manifests/crds/application-crd.yaml" "$src/manifests/crds/appproject-crd.yaml" "$out/argocd-v$argocd/crds/"
  chmod u+w "$out/argocd-v$argocd/crds/"*.yaml
fi
say "ready in $out"
echo "$out"
