// Command clusterctl is the upstream clusterctl of sigs.k8s.io/cluster-api, built as is.
package main

import (
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"sigs.k8s.io/cluster-api/cmd/clusterctl/cmd"
)

func main() {
	cmd.Execute()
}
