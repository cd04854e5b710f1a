// promlint lints a Prometheus text exposition with client_golang's testutil/promlint, the linter behind
// `promtool check metrics`.
//
// Usage: promlint < exposition.txt
//
//	stdout: a JSON array of {"metric", "text"} problems (empty when the exposition is clean)
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

type problem struct {
	Metric string `json:"metric"`
	Text   string `json:"text"`
}

func main() {
	problems, err := promlint.New(os.Stdin).Lint()
	if err != nil {
		fmt.Fprintln(os.Stderr, "promlint:", err)
		os.Exit(1)
	}
	out := make([]problem, 0, len(problems))
	for _, p := range problems {
		out = append(out, problem{Metric: p.Metric, Text: p.Text})
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "promlint:", err)
		os.Exit(1)
	}
}
