package main

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// withConfigFile gives cmd a --config flag naming a YAML file whose keys
// are the command's long flag names:
//
//	data-dir: /var/lib/ferry/mmc
//	listen: 0.0.0.0:7946
//	report-interval: 5s
//	macs: [02:00:00:00:00:01, 02:00:00:00:00:02]
//
// A flag given on the command line wins over the file; an unknown key is an
// error (a typo must not silently fall back to a default).
func withConfigFile(cmd *cobra.Command) {
	var path string
	cmd.Flags().StringVar(&path, "config", "", "YAML file of flag values (keys are flag names; the command line wins)")
	prev := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		if path != "" {
			// What the command line set wins over a reload too.
			var onLine []string
			c.Flags().Visit(func(f *pflag.Flag) { onLine = append(onLine, f.Name) })
			if c.Annotations == nil {
				c.Annotations = map[string]string{}
			}
			c.Annotations[annotationCommandLine] = strings.Join(onLine, ",")
			if err := applyConfigFile(c.Flags(), path); err != nil {
				return err
			}
		}
		if prev != nil {
			return prev(c, args)
		}
		return nil
	}
}

// annotationCommandLine names the flags given on the command line.
const annotationCommandLine = "ferry.command-line-flags"

func applyConfigFile(fs *pflag.FlagSet, path string) error {
	return applyConfig(fs, path, true)
}

// applyConfig sets fs's flags from the file; strict refuses a key fs has
// no flag for (a reload reads only the keys it can change, into a set of
// its own).
func applyConfig(fs *pflag.FlagSet, path string, strict bool) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	keys := make([]string, 0, len(doc))
	for k := range doc {
		keys = append(keys, k)
	}
	slices.Sort(keys) // deterministic error order
	for _, k := range keys {
		f := fs.Lookup(k)
		if f == nil && !strict {
			continue
		}
		if f == nil || k == "config" || k == "help" {
			var names []string
			fs.VisitAll(func(f *pflag.Flag) {
				if !f.Hidden && f.Name != "config" && f.Name != "help" {
					names = append(names, f.Name)
				}
			})
			return fmt.Errorf("config %s: unknown key %q (known: %s)", path, k, strings.Join(names, ", "))
		}
		if f.Changed {
			continue
		}
		var val string
		switch v := doc[k].(type) {
		case []any:
			parts := make([]string, len(v))
			for i, x := range v {
				parts[i] = fmt.Sprint(x)
			}
			val = strings.Join(parts, ",")
		case map[string]any:
			return fmt.Errorf("config %s: key %q: want a value, not a mapping", path, k)
		case nil:
			continue
		default:
			val = fmt.Sprint(v)
		}
		if err := fs.Set(k, val); err != nil {
			return fmt.Errorf("config %s: key %q: %w", path, k, err)
		}
	}
	return nil
}
