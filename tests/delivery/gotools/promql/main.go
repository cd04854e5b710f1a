// promql evaluates PromQL queries with Prometheus' own engine (promql) over samples stored in a Prometheus TSDB,
// the way a Grafana panel or an alerting rule would see them.
//
// Usage: promql < request.json
//
//	request.json: {"series": [{"labels": {"__name__": "...", ...}, "points": [[unix_ms, value], ...]}],
//	               "queries": ["..."], "time": unix_ms}
//	stdout:       a JSON array, one {"error", "type", "result": [{"metric": {...}, "value": float}]} per query
//	              (instant queries at "time"; a scalar result is one entry with no labels)
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/tsdb"
)

type series struct {
	Labels map[string]string `json:"labels"`
	Points [][2]float64      `json:"points"`
}

type request struct {
	Series  []series `json:"series"`
	Queries []string `json:"queries"`
	Time    int64    `json:"time"`
}

type sample struct {
	Metric map[string]string `json:"metric"`
	Value  float64           `json:"value"`
}

type result struct {
	Error  string   `json:"error"`
	Type   string   `json:"type"`
	Result []sample `json:"result"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "promql:", err)
		os.Exit(1)
	}
}

func run() error {
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		return err
	}
	var req request
	if err := json.Unmarshal(in, &req); err != nil {
		return fmt.Errorf("stdin: %w", err)
	}
	dir, err := os.MkdirTemp("", "promql-tsdb-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	opts := tsdb.DefaultOptions()
	opts.OutOfOrderTimeWindow = 365 * 24 * time.Hour.Milliseconds()
	db, err := tsdb.Open(dir, nil, nil, opts, nil)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx := context.Background()
	app := db.Appender(ctx)
	for _, s := range req.Series {
		lbls := labels.FromMap(s.Labels)
		for _, p := range s.Points {
			if _, err := app.Append(0, lbls, int64(p[0]), p[1]); err != nil {
				return fmt.Errorf("append %s: %w", lbls, err)
			}
		}
	}
	if err := app.Commit(); err != nil {
		return err
	}
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 10_000_000, Timeout: time.Minute,
		LookbackDelta: 5 * time.Minute})
	at := time.UnixMilli(req.Time)
	out := make([]result, 0, len(req.Queries))
	for _, qs := range req.Queries {
		r := result{Result: []sample{}}
		q, err := engine.NewInstantQuery(ctx, db, nil, qs, at)
		if err != nil {
			r.Error = err.Error()
			out = append(out, r)
			continue
		}
		res := q.Exec(ctx)
		if res.Err != nil {
			r.Error = res.Err.Error()
		} else {
			r.Type = string(res.Value.Type())
			switch v := res.Value.(type) {
			case promql.Vector:
				for _, s := range v {
					r.Result = append(r.Result, sample{Metric: s.Metric.Map(), Value: s.F})
				}
			case promql.Scalar:
				r.Result = append(r.Result, sample{Metric: map[string]string{}, Value: v.V})
			default:
				r.Error = "unsupported result type " + r.Type
			}
		}
		q.Close()
		out = append(out, r)
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
