// Package deploy holds pgmoat's deployment artifacts (Dockerfile, Compose
// demo, Kubernetes manifests, Grafana dashboard, Prometheus rules). Its tests
// check them against the code, so that renaming a metric or a configuration
// key breaks the build instead of a dashboard or a rollout:
//
//   - the Prometheus rules pass promtool check and their unit tests (when
//     promtool is installed), and every alert has a firing and a quiet case;
//   - every metric the dashboard and the rules name is one proxy.NewMetrics
//     registers, and the dashboard shows every pgmoat metric;
//   - the pgmoat configuration in the Kubernetes ConfigMap and the Compose
//     demo loads with config.Load, with the secrets wired as the manifests
//     wire them, and the ports, probes and selectors agree with each other;
//   - the Dockerfile copies files that exist, and its health check script
//     works against pgmoat's real HTTP handler.
package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/proxy"
)

const (
	rulesFile     = "prometheus/pgmoat-rules.yaml"
	rulesTestFile = "prometheus/pgmoat-rules.test.yaml"
	dashboardFile = "grafana/pgmoat-dashboard.json"
	composeFile   = "docker-compose.yaml"
	k8sDir        = "kubernetes"
)

// TestPromtool runs promtool on the rules and their unit tests. CI installs
// it (Debian package prometheus); elsewhere the test is skipped.
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not on PATH; install it (Debian: apt-get install prometheus) to check the Prometheus rules")
	}
	for _, args := range [][]string{
		{"check", "rules", filepath.Base(rulesFile)},
		{"test", "rules", filepath.Base(rulesTestFile)},
	} {
		t.Run(strings.Join(args[:2], " "), func(t *testing.T) {
			cmd := exec.Command(promtool, args...)
			cmd.Dir = filepath.Dir(rulesFile) // the test file names the rules file relative to itself
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
}

// ruleFile is the part of a Prometheus rule file the tests read.
type ruleFile struct {
	Groups []struct {
		Name  string
		Rules []struct {
			Record string
			Alert  string
			Expr   string
		}
	}
}

// ruleTestFile is the part of a promtool test file the tests read.
type ruleTestFile struct {
	Tests []struct {
		Name        string
		InputSeries []struct {
			Series string
		} `yaml:"input_series"`
		AlertRuleTest []struct {
			Alertname string
			ExpAlerts []yaml.Node `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
		PromQLExprTest []struct {
			Expr string
		} `yaml:"promql_expr_test"`
	}
}

// TestRuleTestsCoverAlerts checks that every alert has a unit test where it
// fires and one where it does not, and every recording rule a test.
func TestRuleTestsCoverAlerts(t *testing.T) {
	var rules ruleFile
	readYAML(t, rulesFile, &rules)
	var tests ruleTestFile
	readYAML(t, rulesTestFile, &tests)

	firing, quiet, exprs := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, at := range tc.AlertRuleTest {
			if len(at.ExpAlerts) > 0 {
				firing[at.Alertname] = true
			} else {
				quiet[at.Alertname] = true
			}
		}
		for _, et := range tc.PromQLExprTest {
			exprs[strings.TrimSpace(et.Expr)] = true
		}
	}
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			n++
			switch {
			case r.Alert != "":
				if !firing[r.Alert] {
					t.Errorf("alert %s: no test in %s where it fires", r.Alert, rulesTestFile)
				}
				if !quiet[r.Alert] {
					t.Errorf("alert %s: no test in %s where it does not fire", r.Alert, rulesTestFile)
				}
			case r.Record != "":
				if !exprs[r.Record] {
					t.Errorf("recording rule %s: no promql_expr_test in %s", r.Record, rulesTestFile)
				}
			}
		}
	}
	if n == 0 {
		t.Fatalf("%s: no rules", rulesFile)
	}
}

// knownMetrics returns every series name pgmoat exports (histograms as their
// _bucket, _sum and _count series) and the metric families, from a registry
// filled by proxy.NewMetrics. Vectors without pre-created series and the
// policy cache collector export nothing until used, so they are used here.
func knownMetrics(t *testing.T) (series map[string]bool, families []string) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := proxy.NewMetrics(reg, 10)
	m.Blocked("acme", "unprotected_relation", "public.audit_raw")
	m.SetBuildInfo("test")
	m.ObservePolicyCache(func() (uint64, uint64, int) { return 1, 1, 1 })
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series = map[string]bool{}
	for _, mf := range mfs {
		name := mf.GetName()
		families = append(families, name)
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				series[name+suffix] = true
			}
			continue
		}
		series[name] = true
	}
	if len(families) < 10 {
		t.Fatalf("gathered only %d metric families from proxy.NewMetrics: %v", len(families), families)
	}
	return series, families
}

var (
	// quotedRE matches PromQL string literals (label values, regexps).
	quotedRE = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	// nameRE matches identifiers and metric names; recording rule names
	// contain colons.
	nameRE = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
)

// metricRefs returns the pgmoat metric names (pgmoat_*) and the recording
// rule names (level:metric:operations) that a PromQL expression refers to.
func metricRefs(expr string) (metrics, recorded []string) {
	for _, tok := range nameRE.FindAllString(quotedRE.ReplaceAllString(expr, `""`), -1) {
		switch {
		case strings.Contains(tok, ":"):
			recorded = append(recorded, tok)
		case strings.HasPrefix(tok, "pgmoat_"):
			metrics = append(metrics, tok)
		}
	}
	return metrics, recorded
}

// dashboardExprs returns the PromQL of every panel target and every query
// variable of the Grafana dashboard, keyed by where it is.
func dashboardExprs(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID        string
		Panels     []json.RawMessage
		Templating struct {
			List []struct {
				Name  string
				Type  string
				Query json.RawMessage
			}
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if dash.UID == "" {
		t.Errorf("%s: no uid (provisioning and links need a stable one)", dashboardFile)
	}
	exprs := map[string]string{}
	var walk func(where string, v any)
	walk = func(where string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if title, ok := v["title"].(string); ok {
				where = title
			}
			if e, ok := v["expr"].(string); ok {
				exprs[fmt.Sprintf("panel %q target %v", where, v["refId"])] = e
			}
			for _, c := range v {
				walk(where, c)
			}
		case []any:
			for _, c := range v {
				walk(where, c)
			}
		}
	}
	for _, raw := range dash.Panels {
		var p any
		if err := json.Unmarshal(raw, &p); err != nil {
			t.Fatal(err)
		}
		walk("", p)
	}
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		// A string, or {"query": "..."} in newer dashboards.
		var q string
		if err := json.Unmarshal(v.Query, &q); err != nil {
			var obj struct{ Query string }
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				t.Fatalf("%s: variable %s: query: %v", dashboardFile, v.Name, err)
			}
			q = obj.Query
		}
		exprs["variable "+v.Name] = q
	}
	if len(exprs) == 0 {
		t.Fatalf("%s: no expressions found", dashboardFile)
	}
	return exprs
}

// TestMetricNames checks every metric name in the dashboard, the rules and
// the rule tests against the metrics pgmoat registers.
func TestMetricNames(t *testing.T) {
	known, families := knownMetrics(t)

	var rules ruleFile
	readYAML(t, rulesFile, &rules)
	recorded := map[string]bool{}
	ruleExprs := map[string]string{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				recorded[r.Record] = true
				ruleExprs["recording rule "+r.Record] = r.Expr
			} else {
				ruleExprs["alert "+r.Alert] = r.Expr
			}
		}
	}

	// check reports unknown names in expr and whether it names a pgmoat
	// metric or a recording rule at all; up (Prometheus' own) is allowed
	// where allowUp.
	check := func(t *testing.T, file, where, expr string, allowUp bool) (used []string) {
		t.Helper()
		metrics, recs := metricRefs(expr)
		for _, m := range metrics {
			if !known[m] {
				t.Errorf("%s: %s: metric %s is not exported by pgmoat (proxy/metrics.go)", file, where, m)
			}
		}
		for _, r := range recs {
			if !recorded[r] {
				t.Errorf("%s: %s: %s is not a recording rule in %s", file, where, r, rulesFile)
			}
		}
		if len(metrics) == 0 && len(recs) == 0 && !(allowUp && slices.Contains(nameRE.FindAllString(expr, -1), "up")) {
			t.Errorf("%s: %s: names no pgmoat metric: %s", file, where, expr)
		}
		return metrics
	}

	t.Run("dashboard", func(t *testing.T) {
		shown := map[string]bool{}
		for where, expr := range dashboardExprs(t) {
			for _, m := range check(t, dashboardFile, where, expr, false) {
				shown[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")] = true
			}
		}
		for _, f := range families {
			if strings.HasPrefix(f, "pgmoat_") && !shown[f] {
				t.Errorf("%s: metric %s is on no panel; add one", dashboardFile, f)
			}
		}
	})
	t.Run("rules", func(t *testing.T) {
		for where, expr := range ruleExprs {
			check(t, rulesFile, where, expr, true)
		}
	})
	t.Run("rule tests", func(t *testing.T) {
		var tests ruleTestFile
		readYAML(t, rulesTestFile, &tests)
		for _, tc := range tests.Tests {
			for _, s := range tc.InputSeries {
				name, _, _ := strings.Cut(s.Series, "{")
				if name != "up" && !known[name] {
					t.Errorf("%s: test %q: input series %s is not a pgmoat metric", rulesTestFile, tc.Name, name)
				}
			}
			for _, et := range tc.PromQLExprTest {
				check(t, rulesTestFile, "test "+tc.Name, et.Expr, false)
			}
		}
	})
}

// k8sObject is the part of a Kubernetes object the tests read.
type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string
	Metadata   struct {
		Name   string
		Labels map[string]string
	}
	Data       map[string]string // ConfigMap
	StringData map[string]string `yaml:"stringData"` // Secret
	Spec       yaml.Node
	Resources  []string // Kustomization
}

type deploymentSpec struct {
	Selector struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	}
	Template struct {
		Metadata struct {
			Labels      map[string]string
			Annotations map[string]string
		}
		Spec podSpec
	}
}

type podSpec struct {
	SecurityContext struct {
		RunAsNonRoot *bool `yaml:"runAsNonRoot"`
	} `yaml:"securityContext"`
	InitContainers []container `yaml:"initContainers"`
	Containers     []container
	Volumes        []volume
}

type volume struct {
	Name   string
	Secret *struct {
		SecretName string `yaml:"secretName"`
		Items      []struct{ Key, Path string }
	}
	ConfigMap *struct{ Name string } `yaml:"configMap"`
}

type container struct {
	Name          string
	RestartPolicy string `yaml:"restartPolicy"`
	Env           []struct {
		Name      string
		Value     string
		ValueFrom *struct {
			SecretKeyRef *struct{ Name, Key string } `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	}
	Ports []struct {
		Name          string
		ContainerPort int `yaml:"containerPort"`
	}
	StartupProbe    *probe `yaml:"startupProbe"`
	LivenessProbe   *probe `yaml:"livenessProbe"`
	ReadinessProbe  *probe `yaml:"readinessProbe"`
	SecurityContext struct {
		RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		Capabilities             struct{ Drop []string }
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

type servicePort struct {
	Name       string
	TargetPort string `yaml:"targetPort"` // a port name or number
}

type relabeling struct {
	TargetLabel string `yaml:"targetLabel"`
	Replacement string
}

type probe struct {
	HTTPGet *struct {
		Path string
		Port string // a port name or number
	} `yaml:"httpGet"`
}

// port resolves a probe or Service port, a name or a number, to the number
// of one of c's ports.
func (c *container) port(p string) (int, bool) {
	for _, cp := range c.Ports {
		if cp.Name == p || fmt.Sprint(cp.ContainerPort) == p {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

// manifests reads every YAML document in deploy/kubernetes, keyed by
// "Kind/name".
func manifests(t *testing.T) map[string]*k8sObject {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", k8sDir, err)
	}
	objs := map[string]*k8sObject{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			var o k8sObject
			if err := dec.Decode(&o); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if o.Kind == "" {
				t.Fatalf("%s: a document without kind", f)
			}
			key := o.Kind + "/" + o.Metadata.Name
			if o.Kind == "Kustomization" {
				key = o.Kind
			}
			if _, dup := objs[key]; dup {
				t.Fatalf("%s: %s defined twice", f, key)
			}
			objs[key] = &o
		}
	}
	return objs
}

func object(t *testing.T, objs map[string]*k8sObject, key string) *k8sObject {
	t.Helper()
	o, ok := objs[key]
	if !ok {
		t.Fatalf("%s: no %s", k8sDir, key)
	}
	return o
}

// TestKubernetes loads the ConfigMap's pgmoat.yaml with the pgmoat
// container's environment and mounted secret files materialised from the
// Secret, and checks that the manifests agree with each other.
func TestKubernetes(t *testing.T) {
	objs := manifests(t)

	var dep deploymentSpec
	if err := object(t, objs, "Deployment/shop").Spec.Decode(&dep); err != nil {
		t.Fatal(err)
	}
	pod := dep.Template.Spec
	var pgmoat, app *container
	for _, list := range [][]container{pod.InitContainers, pod.Containers} {
		for i := range list {
			switch list[i].Name {
			case "pgmoat":
				pgmoat = &list[i]
			case "app":
				app = &list[i]
			}
		}
	}
	if pgmoat == nil || app == nil {
		t.Fatal("Deployment/shop: want containers pgmoat and app")
	}
	// An init container that never exits blocks the pod, unless it is a
	// native sidecar.
	if slices.ContainsFunc(pod.InitContainers, func(c container) bool { return c.Name == "pgmoat" }) && pgmoat.RestartPolicy != "Always" {
		t.Errorf("pgmoat is an init container without restartPolicy: Always")
	}

	// Materialise the pgmoat container's volumes under a temporary root and
	// point the config's absolute paths there.
	root := t.TempDir()
	var rewrites []string
	for _, vm := range pgmoat.VolumeMounts {
		i := slices.IndexFunc(pod.Volumes, func(v volume) bool { return v.Name == vm.Name })
		if i < 0 {
			t.Fatalf("pgmoat volumeMount %s: no such volume", vm.Name)
		}
		v := pod.Volumes[i]
		files := map[string]string{}
		switch {
		case v.ConfigMap != nil:
			files = object(t, objs, "ConfigMap/"+v.ConfigMap.Name).Data
		case v.Secret != nil:
			s := object(t, objs, "Secret/"+v.Secret.SecretName).StringData
			if len(v.Secret.Items) == 0 {
				files = s
			}
			for _, it := range v.Secret.Items {
				val, ok := s[it.Key]
				if !ok {
					t.Fatalf("volume %s: Secret %s has no key %s", v.Name, v.Secret.SecretName, it.Key)
				}
				files[it.Path] = val
			}
		default:
			t.Fatalf("volume %s: want a ConfigMap or a Secret", v.Name)
		}
		dir := filepath.Join(root, vm.MountPath)
		for name, content := range files {
			writeFile(t, filepath.Join(dir, name), content)
		}
		rewrites = append(rewrites, vm.MountPath+"/", dir+"/")
	}
	cfgPath := filepath.Join(root, "etc/pgmoat/pgmoat.yaml") // the image's $PGMOAT_CONFIG
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatalf("pgmoat.yaml is not mounted at /etc/pgmoat, where the image reads it: %v", err)
	}
	writeFile(t, cfgPath, strings.NewReplacer(rewrites...).Replace(string(raw)))

	secretValue := func(ref *struct{ Name, Key string }) string {
		s := object(t, objs, "Secret/"+ref.Name).StringData
		v, ok := s[ref.Key]
		if !ok {
			t.Fatalf("Secret %s has no key %s", ref.Name, ref.Key)
		}
		return v
	}
	clearPgmoatEnv(t)
	for _, e := range pgmoat.Env {
		if !strings.HasPrefix(e.Name, config.EnvPrefix+"_") {
			continue
		}
		val := e.Value
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			val = secretValue(e.ValueFrom.SecretKeyRef)
		}
		t.Setenv(e.Name, val)
	}
	cfg, err := config.Load(cfgPath, nil)
	if err != nil {
		t.Fatalf("the ConfigMap's pgmoat.yaml does not load:\n%v", err)
	}

	t.Run("secrets reach pgmoat", func(t *testing.T) {
		if cfg.Upstream.Password == "" {
			t.Error("no upstream password: set PGMOAT_UPSTREAM_PASSWORD or upstream.password_file")
		}
		// The application's login must be one pgmoat accepts, with the same
		// password.
		env := map[string]string{}
		for _, e := range app.Env {
			env[e.Name] = e.Value
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				env[e.Name] = secretValue(e.ValueFrom.SecretKeyRef)
			}
		}
		i := slices.IndexFunc(cfg.Users, func(u config.User) bool { return u.Name == env["PGUSER"] })
		if i < 0 {
			t.Fatalf("the app logs in as PGUSER=%q, which is not in pgmoat's users", env["PGUSER"])
		}
		if cfg.Users[i].Password != env["PGPASSWORD"] {
			t.Errorf("the app's PGPASSWORD is not pgmoat's password for %s", env["PGUSER"])
		}
		if env["PGHOST"] != "127.0.0.1" || env["PGPORT"] != port(t, cfg.Listen) {
			t.Errorf("the app connects to %s:%s, pgmoat listens on %s", env["PGHOST"], env["PGPORT"], cfg.Listen)
		}
	})

	t.Run("listeners and probes", func(t *testing.T) {
		if host, _, _ := net.SplitHostPort(cfg.Listen); host != "127.0.0.1" {
			t.Errorf("listen %s: a sidecar listens on loopback only", cfg.Listen)
		}
		if host, _, _ := net.SplitHostPort(cfg.MetricsListen); host == "127.0.0.1" || host == "localhost" {
			t.Errorf("metrics_listen %s: the kubelet's probes and Prometheus cannot reach loopback", cfg.MetricsListen)
		}
		metricsPort := port(t, cfg.MetricsListen)
		for _, pc := range []struct {
			name string
			p    *probe
			path string
		}{
			{"startupProbe", pgmoat.StartupProbe, "/readyz"},
			{"livenessProbe", pgmoat.LivenessProbe, "/healthz"},
			{"readinessProbe", pgmoat.ReadinessProbe, "/readyz"},
		} {
			if pc.p == nil || pc.p.HTTPGet == nil {
				t.Errorf("pgmoat %s: want an httpGet probe", pc.name)
				continue
			}
			if pc.p.HTTPGet.Path != pc.path {
				t.Errorf("pgmoat %s: path %s, want %s", pc.name, pc.p.HTTPGet.Path, pc.path)
			}
			if n, ok := pgmoat.port(pc.p.HTTPGet.Port); !ok || fmt.Sprint(n) != metricsPort {
				t.Errorf("pgmoat %s: port %s is not metrics_listen's %s", pc.name, pc.p.HTTPGet.Port, metricsPort)
			}
		}
		ann := dep.Template.Metadata.Annotations
		if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != metricsPort || ann["prometheus.io/path"] != "/metrics" {
			t.Errorf("pod annotations %v: want prometheus.io scrape true, port %s, path /metrics", ann, metricsPort)
		}
	})

	t.Run("security context", func(t *testing.T) {
		for _, c := range []*container{pgmoat, app} {
			sc := c.SecurityContext
			if !isTrue(sc.RunAsNonRoot) && !isTrue(pod.SecurityContext.RunAsNonRoot) {
				t.Errorf("%s: runAsNonRoot is not set", c.Name)
			}
			if !isTrue(sc.ReadOnlyRootFilesystem) {
				t.Errorf("%s: readOnlyRootFilesystem is not true", c.Name)
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("%s: allowPrivilegeEscalation is not false", c.Name)
			}
			if !slices.Contains(sc.Capabilities.Drop, "ALL") {
				t.Errorf("%s: capabilities do not drop ALL", c.Name)
			}
		}
	})

	t.Run("selectors", func(t *testing.T) {
		podLabels := dep.Template.Metadata.Labels
		if !subset(dep.Selector.MatchLabels, podLabels) {
			t.Errorf("Deployment selector %v does not match the pod labels %v", dep.Selector.MatchLabels, podLabels)
		}
		svcObj := object(t, objs, "Service/shop-pgmoat-metrics")
		var svc struct {
			Selector map[string]string
			Ports    []servicePort
		}
		if err := svcObj.Spec.Decode(&svc); err != nil {
			t.Fatal(err)
		}
		if !subset(svc.Selector, podLabels) {
			t.Errorf("Service selector %v does not match the pod labels %v", svc.Selector, podLabels)
		}
		var sm struct {
			Selector struct {
				MatchLabels map[string]string `yaml:"matchLabels"`
			}
			Endpoints []struct {
				Port        string
				Relabelings []relabeling
			}
		}
		if err := object(t, objs, "ServiceMonitor/shop-pgmoat").Spec.Decode(&sm); err != nil {
			t.Fatal(err)
		}
		if !subset(sm.Selector.MatchLabels, svcObj.Metadata.Labels) {
			t.Errorf("ServiceMonitor selector %v does not match the Service labels %v", sm.Selector.MatchLabels, svcObj.Metadata.Labels)
		}
		for _, ep := range sm.Endpoints {
			i := slices.IndexFunc(svc.Ports, func(p servicePort) bool { return p.Name == ep.Port })
			if i < 0 {
				t.Errorf("ServiceMonitor endpoint port %s is not a Service port", ep.Port)
				continue
			}
			if n, ok := pgmoat.port(svc.Ports[i].TargetPort); !ok || fmt.Sprint(n) != port(t, cfg.MetricsListen) {
				t.Errorf("Service port %s targets %s, not pgmoat's metrics port", ep.Port, svc.Ports[i].TargetPort)
			}
			// The rules select job="pgmoat" (PgmoatDown).
			if !slices.ContainsFunc(ep.Relabelings, func(r relabeling) bool {
				return r.TargetLabel == "job" && r.Replacement == "pgmoat"
			}) {
				t.Errorf("ServiceMonitor endpoint %s does not set job=pgmoat, which the alert rules expect", ep.Port)
			}
		}
	})

	t.Run("kustomization", func(t *testing.T) {
		for _, r := range object(t, objs, "Kustomization").Resources {
			if _, err := os.Stat(filepath.Join(k8sDir, r)); err != nil {
				t.Errorf("kustomization resource: %v", err)
			}
		}
	})
}

// composeSpec is the part of a Compose file the tests read.
type composeSpec struct {
	Services map[string]struct {
		Image string
		Build *struct {
			Context    string
			Dockerfile string
		}
		Environment map[string]string
		Volumes     []string
		DependsOn   map[string]struct{ Condition string } `yaml:"depends_on"`
	}
}

// TestCompose checks that the Compose demo's files exist, the services wait
// for each other and the pgmoat configuration loads with the service's
// environment and points at the postgres service.
func TestCompose(t *testing.T) {
	var c composeSpec
	readYAML(t, composeFile, &c)
	for _, name := range []string{"postgres", "pgmoat", "client"} {
		if _, ok := c.Services[name]; !ok {
			t.Fatalf("%s: no service %s", composeFile, name)
		}
	}

	// mounts maps each service's container paths to the host files, which
	// must exist (relative to the compose file's directory).
	mounts := map[string]map[string]string{}
	for name, s := range c.Services {
		mounts[name] = map[string]string{}
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) < 2 || !strings.HasPrefix(parts[0], ".") {
				continue // a named volume
			}
			if _, err := os.Stat(parts[0]); err != nil {
				t.Errorf("%s: service %s mounts %v", composeFile, name, err)
			}
			mounts[name][parts[1]] = parts[0]
		}
	}

	t.Run("postgres runs the demo schema in app", func(t *testing.T) {
		pg := c.Services["postgres"]
		if pg.Environment["POSTGRES_DB"] != "app" {
			t.Errorf("POSTGRES_DB = %q; schema.sql runs in database app", pg.Environment["POSTGRES_DB"])
		}
		found := false
		for dst, src := range mounts["postgres"] {
			if strings.HasPrefix(dst, "/docker-entrypoint-initdb.d/") && filepath.Clean(src) == "demo/schema.sql" {
				found = true
			}
		}
		if !found {
			t.Error("demo/schema.sql is not mounted into /docker-entrypoint-initdb.d/")
		}
	})

	t.Run("pgmoat", func(t *testing.T) {
		s := c.Services["pgmoat"]
		if s.Build == nil {
			t.Fatal("pgmoat is not built from the Dockerfile")
		}
		if _, err := os.Stat(filepath.Join(s.Build.Context, s.Build.Dockerfile)); err != nil {
			t.Errorf("build: %v", err)
		}
		if s.DependsOn["postgres"].Condition != "service_healthy" {
			t.Error("pgmoat does not wait for postgres to be healthy")
		}
		src, ok := mounts["pgmoat"]["/etc/pgmoat/pgmoat.yaml"]
		if !ok {
			t.Fatal("no config file mounted at /etc/pgmoat/pgmoat.yaml, where the image reads it")
		}
		clearPgmoatEnv(t)
		for k, v := range s.Environment {
			if strings.HasPrefix(k, config.EnvPrefix+"_") {
				t.Setenv(k, v)
			}
		}
		cfg, err := config.Load(src, nil)
		if err != nil {
			t.Fatalf("%s does not load:\n%v", src, err)
		}
		if host, _, _ := net.SplitHostPort(cfg.Listen); host == "127.0.0.1" || host == "localhost" {
			t.Errorf("listen %s: the client container cannot reach loopback", cfg.Listen)
		}
		if !strings.Contains(cfg.Upstream.DSN, "host=postgres ") || cfg.Upstream.Password != "pgmoat_secret" {
			t.Errorf("upstream %q: want host=postgres and the password schema.sql gives role pgmoat", cfg.Upstream.DSN)
		}
		for _, want := range []struct{ user, tenant string }{{"acme_app", "acme"}, {"globex_app", "globex"}} {
			if !slices.ContainsFunc(cfg.Users, func(u config.User) bool { return u.Name == want.user && u.Tenant == want.tenant }) {
				t.Errorf("no user %s in tenant %s (the demo client logs in as it)", want.user, want.tenant)
			}
		}
	})

	t.Run("client waits for pgmoat", func(t *testing.T) {
		if c.Services["client"].DependsOn["pgmoat"].Condition != "service_healthy" {
			t.Error("client does not wait for pgmoat to be healthy")
		}
	})
}

// TestDockerfile checks the files the Dockerfile copies from the build
// context (the repository root) exist, and the ports, user and health check.
func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines.
	text := strings.ReplaceAll(string(data), "\\\n", " ")
	var exposed []string
	var user string
	health := false
	for line := range strings.Lines(text) {
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "COPY":
			if slices.ContainsFunc(fields, func(f string) bool { return strings.HasPrefix(f, "--from=") }) {
				continue // from another stage
			}
			args := slices.DeleteFunc(fields[1:], func(f string) bool { return strings.HasPrefix(f, "--") })
			for _, src := range args[:len(args)-1] {
				if _, err := os.Stat(filepath.Join("..", src)); err != nil {
					t.Errorf("COPY %s: %v", src, err)
				}
			}
		case "EXPOSE":
			exposed = append(exposed, fields[1:]...)
		case "USER":
			user = fields[1]
		case "HEALTHCHECK":
			health = strings.Contains(line, "pgmoat-healthcheck")
		}
	}
	sort.Strings(exposed)
	if !slices.Equal(exposed, []string{"6432", "9930"}) {
		t.Errorf("EXPOSE %v, want 6432 9930", exposed)
	}
	if u, _, _ := strings.Cut(user, ":"); u == "" || u == "0" || u == "root" {
		t.Errorf("USER %q: the image must not run as root", user)
	}
	if !health {
		t.Error("no HEALTHCHECK running pgmoat-healthcheck")
	}
}

// TestHealthcheckScript runs healthcheck.sh, the image's HEALTHCHECK,
// against pgmoat's HTTP handler.
func TestHealthcheckScript(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not on PATH")
	}
	notReady := errors.New("catalog not loaded")
	var readyErr atomic.Pointer[error] // set by each case, read by the handler
	srv := httptest.NewServer(proxy.NewHTTPHandler(prometheus.NewRegistry(), func() error {
		if err := readyErr.Load(); err != nil {
			return *err
		}
		return nil
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	_, srvPort, _ := net.SplitHostPort(addr)

	// A port nothing listens on: bind one, then close it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()

	tests := []struct {
		name    string
		env     []string
		args    []string
		ready   error
		healthy bool
	}{
		{"healthz", []string{"PGMOAT_HEALTHCHECK_ADDR=" + addr}, nil, nil, true},
		{"healthz while not ready", []string{"PGMOAT_HEALTHCHECK_ADDR=" + addr}, nil, notReady, true},
		{"readyz", []string{"PGMOAT_HEALTHCHECK_ADDR=" + addr}, []string{"/readyz"}, nil, true},
		{"readyz while not ready", []string{"PGMOAT_HEALTHCHECK_ADDR=" + addr}, []string{"/readyz"}, notReady, false},
		{"unknown path", []string{"PGMOAT_HEALTHCHECK_ADDR=" + addr}, []string{"/nope"}, nil, false},
		{"wildcard metrics_listen", []string{"PGMOAT_METRICS_LISTEN=0.0.0.0:" + srvPort}, nil, nil, true},
		{"empty host metrics_listen", []string{"PGMOAT_METRICS_LISTEN=:" + srvPort}, nil, nil, true},
		{"nothing listening", []string{"PGMOAT_HEALTHCHECK_ADDR=" + closed}, nil, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.ready != nil {
				readyErr.Store(&tt.ready)
			} else {
				readyErr.Store(nil)
			}
			cmd := exec.Command(bash, append([]string{"healthcheck.sh"}, tt.args...)...)
			cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool {
				return strings.HasPrefix(kv, "PGMOAT_")
			}), tt.env...)
			out, err := cmd.CombinedOutput()
			if healthy := err == nil; healthy != tt.healthy {
				t.Errorf("healthy = %v, want %v (err %v)\n%s", healthy, tt.healthy, err, out)
			}
		})
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// clearPgmoatEnv blanks inherited PGMOAT_* variables for the test (config.Load
// ignores empty ones).
func clearPgmoatEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, config.EnvPrefix+"_") {
			t.Setenv(k, "")
		}
	}
}

// port returns the port of a host:port address.
func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%q: %v", addr, err)
	}
	return p
}

func subset(sub, super map[string]string) bool {
	if len(sub) == 0 {
		return false
	}
	for k, v := range sub {
		if super[k] != v {
			return false
		}
	}
	return true
}

func isTrue(b *bool) bool { return b != nil && *b }
