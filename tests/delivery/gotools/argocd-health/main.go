// argocd-health evaluates Argo CD resource health for Kubernetes objects with Argo CD's own code:
// the argocd-cm ConfigMap is loaded by Argo CD's settings manager (util/settings), its resource
// customizations become lua.ResourceHealthOverrides, and each object goes through gitops-engine's
// health.GetResourceHealth, the function Argo CD's application controller calls for every live resource
// (controller/health.go, setApplicationHealth).
//
// Usage: argocd-health ARGOCD_CM_YAML < objects.json
//
//	objects.json: a JSON array of Kubernetes objects
//	stdout:       a JSON array, one {"status", "message", "error"} per object, in order
//
// A Lua error surfaces as status "Unknown" with the error text, as in the Application's resource tree.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/argoproj/argo-cd/v3/common"
	"github.com/argoproj/argo-cd/v3/util/lua"
	"github.com/argoproj/argo-cd/v3/util/settings"
	"github.com/argoproj/gitops-engine/pkg/health"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/yaml"
)

const namespace = "argocd"

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "argocd-health:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) != 2 {
		return fmt.Errorf("usage: argocd-health ARGOCD_CM_YAML < objects.json")
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		return err
	}
	var cm corev1.ConfigMap
	if err := yaml.UnmarshalStrict(raw, &cm); err != nil {
		return fmt.Errorf("%s: %w", os.Args[1], err)
	}
	if cm.Name != common.ArgoCDConfigMapName {
		return fmt.Errorf("%s: metadata.name is %q, Argo CD reads %q", os.Args[1], cm.Name, common.ArgoCDConfigMapName)
	}
	cm.Namespace = namespace
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{
		Name: common.ArgoCDSecretName, Namespace: namespace,
		Labels: map[string]string{"app.kubernetes.io/part-of": "argocd"},
	}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mgr := settings.NewSettingsManager(ctx, fake.NewClientset(&cm, secret), namespace)
	overrides, err := mgr.GetResourceOverrides()
	if err != nil {
		return fmt.Errorf("settings.GetResourceOverrides: %w", err)
	}
	healthOverrides := lua.ResourceHealthOverrides(overrides)

	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		return err
	}
	var objects []json.RawMessage
	if err := json.Unmarshal(in, &objects); err != nil {
		return fmt.Errorf("stdin: %w", err)
	}
	out := make([]result, 0, len(objects))
	for i, o := range objects {
		u := &unstructured.Unstructured{}
		// the same decoding as objects read from the API server: integers become int64
		if err := u.UnmarshalJSON(o); err != nil {
			return fmt.Errorf("object %d: %w", i, err)
		}
		r := result{}
		hs, err := health.GetResourceHealth(u, healthOverrides)
		if err != nil {
			r.Error = err.Error()
		}
		if hs != nil {
			r.Status, r.Message = string(hs.Status), hs.Message
		}
		out = append(out, r)
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
