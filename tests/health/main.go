// Command health-harness computes what Argo CD and kstatus make of flowstore objects.
//
// tests/packaging/test_argocd_health.py builds and runs it; nothing else does. It reads one JSON
// request on stdin:
//
//	{"argocdCM": {<the data of an argocd-cm ConfigMap>},
//	 "objects":  [{"name": "storedflow-ready", "object": {<a StoredFlow or FlowStorage>}}, …]}
//
// and writes one JSON array on stdout, one entry per object, in order:
//
//	{"name": …,
//	 "argocd": {"configured": H, "closedLibs": H, "openLibs": H},
//	 "kstatus": {"status": …, "message": …, "error": …}}
//
// where H is {"status", "message", "error"}: the health Argo CD shows for the object, and
// the error its Lua run returned, if any. "configured" runs the health check exactly as the
// argocd-cm installs it (standard libraries open only where
// resource.customizations.useOpenLibs.<group>_<kind> is "true"); "closedLibs" and
// "openLibs" force the libraries closed or open, so one run shows that a check works either
// way.
//
// The Argo CD half mirrors, without importing Argo CD (a module of hundreds of
// dependencies), what these files of github.com/argoproj/argo-cd do:
//   - util/settings/settings.go, appendResourceOverridesFromSplitKeys and
//     convertToOverrideKey: argocd-cm keys resource.customizations.<type>.<group>_<kind>
//     become overrides keyed "<group>/<kind>"; useOpenLibs is parsed with strconv.ParseBool;
//   - gitops-engine pkg/health/health.go, GetResourceHealth: an object with a
//     deletionTimestamp (and no hook finalizer) is "Progressing: Pending deletion" before any
//     health check runs; a health check's error becomes "Unknown" with the error as message;
//   - util/lua/lua.go (v2.x+, the version with useOpenLibs: GetHealthScript, runLua,
//     ExecuteHealthLua, decodeValue): a gopher-lua state with SkipOpenLibs = !useOpenLibs,
//     then package, base and table opened in any case, a 1 s timeout, the object as the
//     global `obj`, the script run with DoString, and the value it returns read back through
//     gopher-json's Encode into {status, message}.
//
// Argo CD also loads a reduced `os` library (OpenSafeOs: date and time). The harness leaves
// `os` out: flowstore's checks must not need it, and a check that did fails here.
//
// The kstatus half is the real package: sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute,
// as Flux's health checks and other kstatus-based tools call it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	luajson "layeh.com/gopher-json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// Health is Argo CD's health.HealthStatus as the UI shows it, plus the Lua error if any.
type Health struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error,omitempty"`
}

// Override is the part of Argo CD's v1alpha1.ResourceOverride a health check uses.
type Override struct {
	HealthLua   string
	UseOpenLibs bool
}

type request struct {
	ArgocdCM map[string]string `json:"argocdCM"`
	Objects  []struct {
		Name   string          `json:"name"`
		Object json.RawMessage `json:"object"`
	} `json:"objects"`
}

type kstatusResult struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error,omitempty"`
}

type result struct {
	Name   string `json:"name"`
	Argocd struct {
		Configured Health `json:"configured"`
		ClosedLibs Health `json:"closedLibs"`
		OpenLibs   Health `json:"openLibs"`
	} `json:"argocd"`
	Kstatus kstatusResult `json:"kstatus"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "health-harness:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	var req request
	if err := json.NewDecoder(in).Decode(&req); err != nil {
		return fmt.Errorf("reading the request: %w", err)
	}
	overrides, err := overridesFromConfigMap(req.ArgocdCM)
	if err != nil {
		return err
	}
	results := make([]result, 0, len(req.Objects))
	for _, item := range req.Objects {
		// Decoded the way client-go hands objects to Argo CD and kstatus: integers become
		// int64 (kstatus's NestedInt64 needs that; plain encoding/json would give float64).
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(item.Object); err != nil {
			return fmt.Errorf("object %q: %w", item.Name, err)
		}
		r := result{Name: item.Name}
		r.Argocd.Configured = resourceHealth(obj, overrides, nil)
		closed, open := false, true
		r.Argocd.ClosedLibs = resourceHealth(obj, overrides, &closed)
		r.Argocd.OpenLibs = resourceHealth(obj, overrides, &open)
		r.Kstatus = computeKstatus(obj)
		results = append(results, r)
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(results)
}

// overridesFromConfigMap reads health checks from argocd-cm data as Argo CD's settings
// manager does for the split-key form (resource.customizations.<type>.<group>_<kind>).
func overridesFromConfigMap(data map[string]string) (map[string]Override, error) {
	overrides := map[string]Override{}
	for key, value := range data {
		if !strings.HasPrefix(key, "resource.customizations.") {
			continue
		}
		parts := strings.SplitN(key, ".", 4) // resource, customizations, <type>, <group>_<kind>
		if len(parts) < 4 {
			continue
		}
		groupKind := strings.Split(parts[3], "_")
		var overrideKey string
		switch {
		case len(groupKind) == 2:
			overrideKey = groupKind[0] + "/" + groupKind[1]
		case len(groupKind) == 1 && parts[3] != "":
			overrideKey = parts[3]
		default:
			return nil, fmt.Errorf("argocd-cm key %q: group kind must be <group>_<kind> or <kind>", key)
		}
		o := overrides[overrideKey]
		switch parts[2] {
		case "health":
			o.HealthLua = value
		case "useOpenLibs":
			b, err := strconv.ParseBool(value)
			if err != nil {
				return nil, fmt.Errorf("argocd-cm key %q: %w", key, err)
			}
			o.UseOpenLibs = b
		default:
			// actions, ignoreDifferences, …: not part of health, and not in flowstore's snippet.
			return nil, fmt.Errorf("argocd-cm key %q: the harness only knows health and useOpenLibs", key)
		}
		overrides[overrideKey] = o
	}
	return overrides, nil
}

// resourceHealth is gitops-engine's GetResourceHealth with Argo CD's Lua overrides.
// forceOpenLibs, when set, replaces the argocd-cm's useOpenLibs for this run.
func resourceHealth(obj *unstructured.Unstructured, overrides map[string]Override, forceOpenLibs *bool) Health {
	if obj.GetDeletionTimestamp() != nil && !hasHookFinalizer(obj) {
		return Health{Status: "Progressing", Message: "Pending deletion"}
	}
	gvk := obj.GroupVersionKind()
	key := gvk.Kind
	if gvk.Group != "" {
		key = gvk.Group + "/" + gvk.Kind
	}
	// Argo CD would also try wildcard keys and its built-in checks; flowstore installs exact
	// keys and has no built-in check, so an object without an override gets no health at all.
	override, ok := overrides[key]
	if !ok || override.HealthLua == "" {
		return Health{}
	}
	useOpenLibs := override.UseOpenLibs
	if forceOpenLibs != nil {
		useOpenLibs = *forceOpenLibs
	}
	health, err := executeHealthLua(obj, override.HealthLua, useOpenLibs)
	if err != nil {
		return Health{Status: "Unknown", Message: err.Error(), Error: err.Error()}
	}
	return health
}

func hasHookFinalizer(obj *unstructured.Unstructured) bool {
	for _, f := range obj.GetFinalizers() {
		if f == "argocd.argoproj.io/hook-finalizer" {
			return true
		}
	}
	return false
}

var validHealth = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

// executeHealthLua runs one health script on obj as Argo CD's util/lua VM does.
func executeHealthLua(obj *unstructured.Unstructured, script string, useOpenLibs bool) (Health, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: !useOpenLibs})
	defer l.Close()
	// Whatever useOpenLibs says, Argo CD opens these three: package, base (ipairs, tostring,
	// …) and table. string and math are not among them.
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return Health{}, fmt.Errorf("opening %q: %w", lib.name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1*time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj.Object))
	if err := l.DoString(script); err != nil {
		return Health{}, err
	}
	returned := l.Get(-1)
	switch returned.Type() {
	case lua.LTNil:
		return Health{}, nil
	case lua.LTTable:
	default:
		return Health{}, fmt.Errorf("expect table output from Lua script, not %s", returned.Type().String())
	}
	encoded, err := luajson.Encode(returned)
	if err != nil {
		return Health{}, err
	}
	var health Health
	if err := json.Unmarshal(encoded, &health); err != nil {
		// Meant for an empty table, which encodes as []; Argo CD's errors.As matches any
		// JSON type mismatch, though, and shows no health for all of them.
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return Health{}, nil
		}
		return Health{}, err
	}
	if !validHealth[health.Status] {
		return Health{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return health, nil
}

// toLua converts an unstructured value to Lua the way Argo CD's decodeValue does: gopher-json's
// DecodeValue extended to the integer types unstructured objects hold. Other types are nil.
func toLua(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case int32:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case []interface{}:
		array := l.CreateTable(len(v), 0)
		for _, item := range v {
			array.Append(toLua(l, item))
		}
		return array
	case map[string]interface{}:
		table := l.CreateTable(0, len(v))
		for key, item := range v {
			table.RawSetH(lua.LString(key), toLua(l, item))
		}
		return table
	}
	return lua.LNil
}

func computeKstatus(obj *unstructured.Unstructured) kstatusResult {
	res, err := status.Compute(obj)
	if err != nil {
		return kstatusResult{Error: err.Error()}
	}
	return kstatusResult{Status: string(res.Status), Message: res.Message}
}
