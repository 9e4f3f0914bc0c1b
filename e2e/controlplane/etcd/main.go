// Command etcd is the etcd server, built from its published module so the lab
// needs nothing but the Go module proxy. It runs exactly what etcd's own main
// package runs.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
