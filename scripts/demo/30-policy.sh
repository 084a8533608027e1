# shellcheck shell=bash
# NetworkPolicy (issue 4): the seed's backend-policy (frontend -> backend:8080, backend ->
# database:5432) in cluster 1, enforced by the Patronus agent (datapath from the
# patronus-config ConfigMap: eBPF and nftables by default). One allowed and one denied real
# TCP connection, the denial's audit line (agent log, JSON) and the
# patronus_policy_blocks_total counter (agent metrics, :9476 on the node).
# Sourced by scripts/demo.sh with scripts/demo/lib.sh.
scenario "NetworkPolicy: the seed's backend-policy allows frontend -> backend:8080, denies the rest (cluster 1)"
NS=demo-policy
ns_fresh 1 "$NS"
# Backend and database on node 1; the frontend on node 2 when there is one (the allowed
# connection then crosses nodes).
fnode=$(( DEMO_NODES < 2 ? 1 : 2 ))
run_pod 1 "$fnode" "$NS" frontend agnhost app=frontend
run_pod 1 1 "$NS" backend agnhost app=backend
run_pod 1 1 "$NS" database agnhost app=database -- netexec --http-port=5432
backend=$(pod_ip 1 "$NS" backend)
database=$(pod_ip 1 "$NS" database)
show kc 1 -n "$NS" get pods -o wide

# connect FROM IP:PORT: a TCP connection from pod FROM (agnhost, as the upstream e2e suite
# probes), 3 s timeout.
connect() { pod_exec 1 "$NS" "$1" /agnhost connect "$2" --timeout=3s --protocol=tcp; }

show connect database "$backend:8080" || fail "before any policy: database cannot reach backend:8080"
ok "before the policy: database -> backend:8080 connects"

show kc 1 -n "$NS" apply -f - <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: backend-policy
spec:
  podSelector:
    matchLabels:
      app: backend
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: frontend
    ports:
    - protocol: TCP
      port: 8080
  egress:
  - to:
    - podSelector:
        matchLabels:
          app: database
    ports:
    - protocol: TCP
      port: 5432
YAML

# The agent enforces within milliseconds; allow a few seconds on a loaded machine.
denied() { ! connect database "$backend:8080"; }
wait_for "database -> backend:8080 denied" 20 denied || fail "database still reaches backend:8080 after backend-policy"
show connect frontend "$backend:8080" || fail "frontend cannot reach backend:8080 (allowed by backend-policy)"
ok "allowed: frontend -> backend:8080"
show connect backend "$database:5432" || fail "backend cannot reach database:5432 (allowed by backend-policy egress)"
ok "allowed: backend -> database:5432 (egress rule)"
if show connect database "$backend:8080"; then
	fail "database -> backend:8080 connected; backend-policy admits only app=frontend"
fi
ok "denied: database -> backend:8080 (not app=frontend)"

# The audit line: the agent of node 1 logs each denied connection attempt as a JSON line.
apod=$(agent_pod 1 1)
audit_line() {
	kc 1 -n kube-system logs "$apod" -c daemon --since=2m 2>/dev/null |
		grep '"verdict":"deny"' | grep "\"destination\":\"$backend\"" | grep '"port":8080' | grep "$NS/backend-policy" | tail -1
}
wait_for "audit line of the denial" 15 test -n "$(audit_line)" || true
line=$(audit_line)
if [ -n "$line" ]; then
	note "audit (kubectl -n kube-system logs $apod -c daemon):"
	note "$line"
	ok "the denial is in the agent's audit log (policy $NS/backend-policy, direction $(jq -r .direction <<<"$line" 2>/dev/null || echo '?'))"
else
	fail "no audit line for database -> backend:8080 in the log of $apod"
fi

# The counter, from the agent's metrics on node 1 (hostNetwork, port 9476).
blocks() { node_exec 1 1 curl -s --max-time 3 http://127.0.0.1:9476/metrics | grep "^patronus_policy_blocks_total{.*namespace=\"$NS\"" ; }
wait_for "patronus_policy_blocks_total for $NS" 10 blocks || true
if out=$(blocks); then
	note "curl http://127.0.0.1:9476/metrics on $(node_name 1 1):"
	while IFS= read -r l; do note "$l"; done <<<"$out"
	ok "patronus_policy_blocks_total counts the denied packets (policy=\"backend-policy\")"
else
	fail "no patronus_policy_blocks_total{namespace=\"$NS\"} on $(node_name 1 1)"
fi
kc 1 delete namespace "$NS" --wait=false >/dev/null
