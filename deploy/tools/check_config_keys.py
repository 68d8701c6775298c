"""Every key of a binary's config file struct must appear in the shipped config (set, or
commented out with its default), so the ConfigMaps document every setting.

Reads the `pub struct *File` definitions in bins/src/config/{agent,aggregator,collector}.rs
(serde camelCase, explicit `rename`s honoured) and looks for `key:` or `# key:` at the top level
of the base config files. Usage: python check_config_keys.py REPO_ROOT
"""

import os
import re
import sys

FILES = {
    "agent": ("AgentFile", "deploy/base/agent/flowlens-agent.conf.yaml"),
    "aggregator": ("AggregatorFile", "deploy/base/aggregator/flowlens-aggregator.conf.yaml"),
    "collector": ("CollectorFile", "deploy/base/collector/flowlens-collector.conf.yaml"),
}


def camel(snake):
    head, *rest = snake.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def struct_keys(source, name):
    m = re.search(r"pub struct " + name + r" \{(.*?)\n\}", source, re.S)
    if not m:
        raise SystemExit(f"struct {name} not found")
    keys, rename = [], None
    for line in m.group(1).splitlines():
        line = line.strip()
        r = re.match(r'#\[serde\(rename = "([^"]+)"\)\]', line)
        if r:
            rename = r.group(1)
            continue
        f = re.match(r"pub (\w+):", line)
        if f:
            keys.append(rename or camel(f.group(1)))
            rename = None
    return keys


def main():
    root = sys.argv[1]
    missing = []
    total = 0
    for module, (struct, config) in FILES.items():
        with open(os.path.join(root, "bins/src/config", module + ".rs")) as f:
            keys = struct_keys(f.read(), struct)
        with open(os.path.join(root, config)) as f:
            text = f.read()
        for k in keys:
            total += 1
            if not re.search(r"^(# )?" + re.escape(k) + r":", text, re.M):
                missing.append(f"  {config}: key {k} (struct {struct}) is neither set nor shown commented with its default and meaning")
    for m in missing:
        print(m, file=sys.stderr)
    print(f"  {total} config keys: {'FAILED' if missing else 'all documented'}")
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
