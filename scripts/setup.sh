#!/usr/bin/env bash
# Installs the Debian packages that podswitch's build, tests and lab need.
# Idempotent and quiet: it only calls apt when a package is missing.
set -euo pipefail

packages=(
  # build: crates that compile C (libbpf/libxdp for AF_XDP come later);
  # protoc for etcd-client's gRPC definitions
  build-essential pkg-config clang llvm libelf-dev zlib1g-dev libpcap-dev m4 gcc-multilib
  protobuf-compiler libprotobuf-dev
  # tests: namespaces, independent wire-format sources, traffic
  iproute2 procps tcpdump tshark python3-scapy iputils-ping iperf3 ethtool netsniff-ng
  python3-prometheus-client nftables
  # instructions per packet (scripts/instructions.sh)
  valgrind
  # the lease store's tests run a real etcd, over TLS too
  etcd-server openssl
  containernetworking-plugins
  # Open vSwitch's userspace datapath, the bench's second reference
  # (lab --dataplane ovs)
  openvswitch-switch
)

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} > 0)); then
  echo "setup: installing ${missing[*]}" >&2
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: need root to install packages (run as root or with sudo)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # wireshark-common asks whether non-root users may capture; answer for it.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
