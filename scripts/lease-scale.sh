#!/bin/bash
# One podswitchd learning N leases from etcd (issue 12's scale figures in
# docs/benchmarks.md): writes the network config and N vxlan leases in
# flannel's layout, starts podswitchd with the etcd store, and reports the
# time from process start to N peers, its RSS, and the time one changed
# lease takes to reach the peer table (an upper bound: it includes a
# Python start and the polling). Needs root and a release build.
# usage: scripts/lease-scale.sh N
set -u
N=${1:?usage: $0 N}
B=$(cd "$(dirname "$0")/.." && pwd)/target/release
ip netns del sc-n 2>/dev/null; ip netns del sc-u 2>/dev/null; pkill -f "data-dir /tmp/sc-etcd" ; rm -rf /tmp/sc-etcd /tmp/sc-*.sock /tmp/sc-state.json
ip netns add sc-n; ip netns add sc-u
ip -n sc-n link set lo up
ip link add ul0 netns sc-n type veth peer name ul0 netns sc-u
ip -n sc-n addr add 192.168.100.1/24 dev ul0; ip -n sc-n link set ul0 up; ip -n sc-u link set ul0 up
ip netns exec sc-n etcd --name s --data-dir /tmp/sc-etcd --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster s=http://127.0.0.1:2380 >/tmp/sc-etcd.log 2>&1 &
sleep 2
ip netns exec sc-n /usr/bin/python3 - $N <<'PY'
import base64, json, sys, http.client, time
n=int(sys.argv[1]); c=http.client.HTTPConnection('127.0.0.1',2379)
def put(k,v):
    c.request('POST','/v3/kv/put',json.dumps({'key':base64.b64encode(k.encode()).decode(),'value':base64.b64encode(v.encode()).decode()}),{'Content-Type':'application/json'}); c.getresponse().read()
put('/coreos.com/network/config', json.dumps({"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}))
t=time.time()
for i in range(n):
    a,b=divmod(i+2,256)
    put('/coreos.com/network/subnets/10.%d.%d.0-24'%(a,b), json.dumps({"PublicIP":"172.16.%d.%d"%(a,b),"PublicIPv6":None,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:%02x:%02x"%(a,b)}}))
print('wrote %d leases in %.1fs'%(n,time.time()-t))
PY
start=$(date +%s.%N)
ip netns exec sc-n $B/podswitchd --node-name n1 --underlay-interface ul0 --store etcd --etcd-endpoints http://127.0.0.1:2379 --subnet-file /tmp/sc-subnet.env --socket /tmp/sc-ctl.sock --state-file /tmp/sc-state.json --log-level warn --masquerade false > /tmp/sc-pd.log 2>&1 &
while ! $B/podswitchctl --socket /tmp/sc-ctl.sock --json status 2>/dev/null | grep -qE '"peers": *'$N','; do sleep 0.05; done
end=$(date +%s.%N)
echo "N=$N converged in $(echo "$end - $start" | bc) s (process start to $N peers)"
pid=$(pgrep -f "podswitchd --node-name n1")
grep VmRSS /proc/$pid/status
$B/podswitchctl --socket /tmp/sc-ctl.sock status | grep -E "peers|routes|store"
# one change: a lease's VtepMAC changes; time until applied
t0=$(date +%s.%N)
ip netns exec sc-n /usr/bin/python3 -c "
import base64,json,urllib.request
k='/coreos.com/network/subnets/10.0.2.0-24'; v=json.dumps({'PublicIP':'172.16.0.2','PublicIPv6':None,'BackendType':'vxlan','BackendData':{'VNI':1,'VtepMAC':'0e:00:00:00:aa:aa'}})
urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:2379/v3/kv/put',json.dumps({'key':base64.b64encode(k.encode()).decode(),'value':base64.b64encode(v.encode()).decode()}).encode(),{'Content-Type':'application/json'})).read()"
while ! $B/podswitchctl --socket /tmp/sc-ctl.sock --json peer list | grep -q "0e:00:00:00:aa:aa"; do sleep 0.01; done
t1=$(date +%s.%N); echo "one change applied in $(echo "($t1 - $t0)*1000" | bc) ms (incl. python start and polling)"
kill $pid; sleep 1; pkill -f "data-dir /tmp/sc-etcd"; sleep 0.5; ip netns del sc-n; ip netns del sc-u; rm -rf /tmp/sc-etcd /tmp/sc-subnet.env /tmp/sc-state.json /tmp/sc-etcd.log /tmp/sc-pd.log
