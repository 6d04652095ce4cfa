// godriver: podnet's interop harness around libcni (the Go reference CNI runtime).
//
// The interop tests use it as "the Go runtime": to drive CNI plugins (Go's or podnet's) through
// libcni, and to read result caches written by podnet the way libcni reads them.
//
// Usage:
//
//	godriver COMMAND --conf FILE.conflist --container-id ID --ifname NAME
//	         [--netns PATH] [--cache-dir DIR] [--args 'K=V;K2=V2'] [--cap-args JSON]
//
// Commands (each maps to one libcni call on the network list read from --conf):
//
//	add            AddNetworkList; prints the result JSON on stdout
//	del            DelNetworkList
//	check          CheckNetworkList
//	cached-result  GetNetworkListCachedResult; prints the result JSON, or null if none is cached
//	cached-config  GetNetworkListCachedConfig; prints
//	               {"config": <cached config bytes as a string>, "args": [[k,v],...]|null,
//	                "capabilityArgs": {...}|null}, or null if nothing is cached
//
// Plugins are looked up in the colon-separated CNI_PATH. --cache-dir defaults to libcni's
// default (/var/lib/cni). --args and --cap-args become RuntimeConf.Args (CNI_ARGS) and
// RuntimeConf.CapabilityArgs; they are accepted by every command.
// On failure the error goes to stderr and the exit status is non-zero.
//
// Build offline in GOPATH mode against Debian's golang-github-appc-cni-dev:
//
//	GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS= GOCACHE=$(mktemp -d) go build -o godriver main.go
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

type options struct {
	conf        string
	containerID string
	ifName      string
	netns       string
	cacheDir    string
	args        string
	capArgs     string
}

func parseOptions(cmd string, argv []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.StringVar(&o.conf, "conf", "", "network list (.conflist) file")
	fs.StringVar(&o.containerID, "container-id", "", "container ID")
	fs.StringVar(&o.ifName, "ifname", "", "interface name in the container")
	fs.StringVar(&o.netns, "netns", "", "path of the container's network namespace")
	fs.StringVar(&o.cacheDir, "cache-dir", "", "libcni cache directory (default /var/lib/cni)")
	fs.StringVar(&o.args, "args", "", "CNI_ARGS as K=V;K2=V2")
	fs.StringVar(&o.capArgs, "cap-args", "", "capability args as a JSON object")
	if err := fs.Parse(argv); err != nil {
		return nil, err
	}
	if fs.NArg() != 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if o.conf == "" || o.containerID == "" || o.ifName == "" {
		return nil, errors.New("--conf, --container-id and --ifname are required")
	}
	return o, nil
}

func runtimeConf(o *options) (*libcni.RuntimeConf, error) {
	rt := &libcni.RuntimeConf{ContainerID: o.containerID, NetNS: o.netns, IfName: o.ifName}
	if o.args != "" {
		for _, kv := range strings.Split(o.args, ";") {
			if kv == "" {
				continue
			}
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, fmt.Errorf("--args: %q is not K=V", kv)
			}
			rt.Args = append(rt.Args, [2]string{k, v})
		}
	}
	if o.capArgs != "" {
		if err := json.Unmarshal([]byte(o.capArgs), &rt.CapabilityArgs); err != nil {
			return nil, fmt.Errorf("--cap-args: %w", err)
		}
	}
	return rt, nil
}

func printJSON(v interface{}) error {
	out, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Println(string(out))
	return err
}

func run(cmd string, argv []string) error {
	o, err := parseOptions(cmd, argv)
	if err != nil {
		return err
	}
	list, err := libcni.ConfListFromFile(o.conf)
	if err != nil {
		return err
	}
	rt, err := runtimeConf(o)
	if err != nil {
		return err
	}
	var path []string
	if p := os.Getenv("CNI_PATH"); p != "" {
		path = filepath.SplitList(p)
	}
	cni := libcni.NewCNIConfigWithCacheDir(path, o.cacheDir, nil)
	ctx := context.Background()

	switch cmd {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		return printJSON(result)
	case "del":
		return cni.DelNetworkList(ctx, list, rt)
	case "check":
		return cni.CheckNetworkList(ctx, list, rt)
	case "cached-result":
		result, err := cni.GetNetworkListCachedResult(list, rt)
		if err != nil {
			return err
		}
		if result == nil {
			return printJSON(nil)
		}
		return printJSON(result)
	case "cached-config":
		// Start from a RuntimeConf without args so that what is printed comes from the cache.
		bare := &libcni.RuntimeConf{ContainerID: rt.ContainerID, NetNS: rt.NetNS, IfName: rt.IfName}
		config, cached, err := cni.GetNetworkListCachedConfig(list, bare)
		if err != nil {
			return err
		}
		if config == nil && cached == nil {
			return printJSON(nil)
		}
		return printJSON(map[string]interface{}{
			"config":         string(config),
			"args":           cached.Args,
			"capabilityArgs": cached.CapabilityArgs,
		})
	}
	return fmt.Errorf("unknown command %q", cmd)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: godriver add|del|check|cached-result|cached-config --conf FILE --container-id ID --ifname NAME [--netns PATH] [--cache-dir DIR] [--args K=V;...] [--cap-args JSON]")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "godriver:", err)
		os.Exit(1)
	}
}
