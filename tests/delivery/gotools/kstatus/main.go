// kstatus computes the kstatus result (sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute), the status
// library Helm 4's --wait and Flux's health checks use, for Kubernetes objects.
//
// Usage: kstatus < objects.json
//
//	objects.json: a JSON array of Kubernetes objects
//	stdout:       a JSON array, one {"status", "message", "error"} per object, in order
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error"`
}

func main() {
	in, err := io.ReadAll(os.Stdin)
	if err == nil {
		var objects []json.RawMessage
		if err = json.Unmarshal(in, &objects); err == nil {
			out := make([]result, 0, len(objects))
			for i, o := range objects {
				u := &unstructured.Unstructured{}
				if err = u.UnmarshalJSON(o); err != nil {
					err = fmt.Errorf("object %d: %w", i, err)
					break
				}
				r := result{}
				res, cerr := status.Compute(u)
				if cerr != nil {
					r.Error = cerr.Error()
				}
				if res != nil {
					r.Status, r.Message = res.Status.String(), res.Message
				}
				out = append(out, r)
			}
			if err == nil {
				err = json.NewEncoder(os.Stdout).Encode(out)
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}
