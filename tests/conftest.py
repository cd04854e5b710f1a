"""Root test configuration: shared fixtures come from plugins so each area owns its own file.

- tests/pgfixtures.py: a real PostgreSQL server (DATABASE_URL or the embedded PostgreSQL 18) and fresh databases
- tests/testbed/plugin.py: the real Kubernetes test bed (kube-apiserver, kube-controller-manager, etcd, node stand-in)
- tests/testbed/realplugin.py: the same control plane with a real node (containerd, kubelet, kube-scheduler) and
  the images built from the repository
- tests/conformance/plugin.py: the case corpus option of the conformance runner (--cases DIR)
- tests/delivery/gotools.py: the ecosystem's Go code as test tools (Argo CD health, kstatus, promlint), built and cached
"""

pytest_plugins = ["tests.pgfixtures", "tests.testbed.plugin", "tests.testbed.realplugin", "tests.conformance.plugin",
                  "tests.delivery.gotools"]
