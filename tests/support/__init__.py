"""Test support code: a real kube-apiserver + etcd for tests (``kubecluster``)."""
