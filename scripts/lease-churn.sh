#!/bin/bash
# Forwarding while leases churn (issue 12's figure in docs/benchmarks.md):
# a two-node lab whose nodes meet in etcd; TCP between pods on the two
# nodes for 10 s, first with the store quiet, then while another node's
# lease changes its VTEP MAC every 10 ms (each change replaces that peer
# and publishes a new snapshot on both nodes). Needs root and a release
# build. usage: scripts/lease-churn.sh
set -eu
B=$(cd "$(dirname "$0")/.." && pwd)/target/release
N=churn
$B/podswitchctl lab up --name $N --store etcd --nodes 2 --pods-per-node 1 >/dev/null 2>&1
trap '$B/podswitchctl lab down --name $N >/dev/null' EXIT
dst=$($B/podswitchctl lab status --name $N --json | /usr/bin/python3 -c "import json,sys; print([p['ip'] for p in json.load(sys.stdin)['pods'] if p['node']=='node2'][0])")
ip netns exec lab-$N-pod2-1 iperf3 -s -D
sleep 0.5
tcp() { ip netns exec lab-$N-pod1-1 iperf3 -c "$dst" -t 10 -J | /usr/bin/python3 -c "import json,sys; print('%.2f' % (json.load(sys.stdin)['end']['sum_received']['bits_per_second']/1e9))"; }
echo "quiet store:                    $(tcp) Gbit/s"
# churn KEY: writes a vxlan lease value to KEY every ~10 ms for 12 s.
churn() {
ip netns exec lab-$N-ul /usr/bin/python3 - "$1" <<'PY'
import base64, http.client, json, sys, time
c = http.client.HTTPConnection('192.168.100.254', 2379)
key = base64.b64encode(sys.argv[1].encode()).decode()
end, n = time.time() + 12, 0
while time.time() < end:
    v = {"PublicIP": "192.168.100.200", "PublicIPv6": None, "BackendType": "vxlan",
         "BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:%02x:%02x" % divmod(n % 65536, 256)}}
    c.request('POST', '/v3/kv/put', json.dumps({'key': key, 'value': base64.b64encode(json.dumps(v).encode()).decode()}), {'Content-Type': 'application/json'})
    c.getresponse().read(); n += 1
    time.sleep(0.01)
print('  (%d writes)' % n)
PY
}
# The same writes to a key no node watches: what etcd and the writer
# cost the shared CPUs, without any work for podswitchd.
churn /coreos.com/unwatched &
sleep 1
echo "etcd busy, no lease changing:  $(tcp) Gbit/s"
wait
churn /coreos.com/network/subnets/10.244.200.0-24 &
sleep 1
echo "a lease changing every ~10 ms: $(tcp) Gbit/s"
wait
grep -c "peer 10.244.200.0-24 changed" /run/podswitch-lab/$N/node1.log | sed 's/^/changes applied on node1: /'
