#!/usr/bin/env bash
# Provision a Debian machine for npemu and prove the kernel lab works on it: install the system
# tools, install npemu, then check the emulator against real netfilter on the bundled example.
# The Vagrantfile runs this inside its VM; .ci/run runs it directly on the CI machine.
set -euo pipefail
src="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  iproute2 iptables ipset nftables conntrack tcpdump tshark \
  python3 python3-pip python3-venv >/dev/null
cd "$src"
managed=$(python3 -c 'import os, sysconfig; print(os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))')
if [ "$managed" = "True" ]; then
  # Debian's own Python refuses system-wide pip installs (PEP 668): npemu gets a venv.
  python3 -m venv /opt/npemu
  /opt/npemu/bin/pip install -q -e ".[test]"
  ln -sf /opt/npemu/bin/npemu /usr/local/bin/npemu
else
  python3 -m pip install -q -e ".[test]"
fi
npemu lab down
npemu lab verify -f examples/three-tier --port 80 --port 5000 --port 3306 --port 53/UDP \
  --endpoint 192.168.5.10
npemu lab verify -f examples/three-tier --port 80 --port 3306 --endpoint 192.168.5.10 --backend nft
