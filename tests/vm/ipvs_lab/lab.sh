#!/usr/bin/env bash
# Inside the VM: two real servers in network namespaces (rs1 192.168.77.11, rs2 192.168.77.12) behind a
# bridge, each with an HTTP server on 8080 that answers its own name and a hold server on 9000 that keeps
# a TCP connection open; the virtual IPs on a dummy interface; a kube-ipvs0 dummy like kube-proxy's.
set -euo pipefail
here=$(dirname "$0")
# start clean, so that a reused VM (KUBENODE_VM_INVENTORY) gives the same lab
for i in 1 2; do { ip netns pids "kn-rs$i" 2>/dev/null | xargs -r kill; } || true; ip netns del "kn-rs$i" 2>/dev/null || true; done
for link in kn-br kn-rs1 kn-rs2 kn-vip kube-ipvs0; do ip link del "$link" 2>/dev/null || true; done
ip link add kn-br type bridge
ip link set kn-br up
ip addr add 192.168.77.1/24 dev kn-br
for i in 1 2; do
  ip netns add "kn-rs$i"
  ip link add "kn-rs$i" type veth peer name eth0 netns "kn-rs$i"
  ip link set "kn-rs$i" master kn-br up
  ip -n "kn-rs$i" link set lo up
  ip -n "kn-rs$i" addr add "192.168.77.1$i/24" dev eth0
  ip -n "kn-rs$i" link set eth0 up
  ip -n "kn-rs$i" route add default via 192.168.77.1
  mkdir -p "/srv/kn-rs$i"
  echo "rs$i" > "/srv/kn-rs$i/index.html"
  ip netns exec "kn-rs$i" setsid python3 -m http.server 8080 --bind 0.0.0.0 --directory "/srv/kn-rs$i" >/dev/null 2>&1 < /dev/null &
  ip netns exec "kn-rs$i" setsid python3 "$here/hold_server.py" "rs$i" >/dev/null 2>&1 < /dev/null &
done
ip link add kn-vip type dummy
ip link set kn-vip up
ip addr add 10.99.0.10/32 dev kn-vip
ip link add kube-ipvs0 type dummy
ip addr add 10.99.0.30/32 dev kube-ipvs0
for i in 1 2; do
  for port in 8080 9000; do
    for _ in $(seq 100); do
      ip netns exec "kn-rs$i" python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
      sleep 0.2
    done
  done
done
