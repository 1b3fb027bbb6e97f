// etcd as the pinned Kubernetes release uses it (go.etcd.io/etcd/server/v3 at
// the version k8s.io/kubernetes requires), so the tests need no etcd package.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
