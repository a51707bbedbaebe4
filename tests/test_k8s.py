"""The container image and Kubernetes manifests in k8s/: they parse, name entry points and
flags that exist, run non-root with limits, pin their images and hold no credentials."""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import urllib.error
from pathlib import Path

import pytest
import yaml

import clickgraph
from clickgraph.app.cli import SUBCOMMANDS, build_parser
from clickgraph.core.config import load_config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
IMAGE_SRC = "/opt/clickgraph/"            # where the Dockerfile copies the repository
RUN_TEMPLATES = ["spark-build-graph.yaml", "spark-partition.yaml", "rayjob-train.yaml",
                 "job-evaluate-export.yaml"]
SECRET_NAME = "clickgraph-object-store"
CREDENTIAL_NAME = re.compile(r"(ACCESS_KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|API_KEY)", re.I)


def yaml_files() -> list[Path]:
    files = [p for d in (K8S, ROOT / "conf") for p in d.rglob("*") if p.suffix in (".yaml", ".yml")]
    assert files, "no YAML found under k8s/ and conf/"
    return sorted(files)


def manifests() -> dict[str, list[dict]]:
    """Every Kubernetes object under k8s/, by file name (kustomization.yaml excluded)."""
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            out[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def objects(kind: str | None = None) -> list[dict]:
    return [o for docs in manifests().values() for o in docs if kind is None or o["kind"] == kind]


def only(kind: str, name_part: str) -> dict:
    found = [o for o in objects(kind) if name_part in o["metadata"]["name"]]
    assert len(found) == 1, f"expected one {kind} named *{name_part}*, found {len(found)}"
    return found[0]


def pod_specs() -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod template: CronJob, Job, RayJob head/workers/submitter."""
    specs = []
    for o in objects():
        name = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] == "CronJob":
            specs.append((name, o["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        elif o["kind"] in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
            specs.append((name, o["spec"]["template"]["spec"]))
        elif o["kind"] == "Pod":
            specs.append((name, o["spec"]))
        elif o["kind"] == "RayJob":
            cluster = o["spec"]["rayClusterSpec"]
            specs.append((f"{name} head", cluster["headGroupSpec"]["template"]["spec"]))
            for group in cluster["workerGroupSpecs"]:
                specs.append((f"{name} worker {group['groupName']}", group["template"]["spec"]))
            if "submitterPodTemplate" in o["spec"]:
                specs.append((f"{name} submitter", o["spec"]["submitterPodTemplate"]["spec"]))
    return specs


def containers() -> list[tuple[str, dict]]:
    return [(f"{where} {c['name']}", c) for where, spec in pod_specs()
            for c in spec.get("initContainers", []) + spec["containers"]]


def spark_roles() -> list[tuple[str, dict, dict]]:
    """(where, driver or executor spec, application spec) of every SparkApplication."""
    return [(f"{o['metadata']['name']} {role}", o["spec"][role], o["spec"])
            for o in objects("SparkApplication") for role in ("driver", "executor")]


def walk(node, key: str):
    """Every value stored under ``key`` anywhere in ``node``."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, key)


def load_daily():
    spec = importlib.util.spec_from_file_location("clickgraph_k8s_daily", K8S / "daily.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ parsing and layout


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no document"
    if path.parent == K8S:
        for doc in docs:
            assert {"apiVersion", "kind"} <= set(doc), f"{path}: a document without apiVersion/kind"


def test_kustomization_lists_existing_files_and_every_manifest_has_a_role():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization.yaml lists missing {name}"
    # every manifest is either applied by kustomize or a run template the daily job creates
    assert set(manifests()) == set(listed) | set(RUN_TEMPLATES)
    assert not set(listed) & set(RUN_TEMPLATES), "run templates must not be applied all at once"
    assert kustomization["namespace"] == only("Namespace", "clickgraph")["metadata"]["name"]
    for o in objects():
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == kustomization["namespace"], o["metadata"]["name"]


def test_kustomize_renders_offline():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(result.stdout) if d}
    assert {"Namespace", "ConfigMap", "CronJob", "NetworkPolicy", "Role", "RoleBinding"} <= kinds


def test_core_kinds_pass_kubectl_client_dry_run(tmp_path):
    """Client-side dry run of the core kinds. SparkApplication and RayJob are custom
    resources: kubectl cannot validate them without their CRDs installed, so they are left
    out here and checked field by field by the tests below."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH")
    probe = subprocess.run([kubectl, "version", "--request-timeout=5s", "-o", "json"],
                           capture_output=True, text=True, timeout=30)
    if '"serverVersion"' not in probe.stdout:
        pytest.skip("kubectl finds no API server: --dry-run=client still needs one for discovery "
                    f"and the OpenAPI schema ({probe.stderr.strip().splitlines()[-1:]})")
    core = [o for o in objects() if o["kind"] not in ("SparkApplication", "RayJob")]
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump_all(core))
    result = subprocess.run([kubectl, "apply", "--dry-run=client", "-f", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ entry points and flags


def script_flags(path: Path) -> set[str]:
    """Long options a script's argparse parser declares (read from its source)."""
    return set(re.findall(r"add_argument\(\s*[\"'](--[a-z0-9-]+)[\"']", path.read_text()))


def check_command(argv: list[str], where: str) -> None:
    """Assert the program ``argv`` runs exists in the repository and knows its flags."""
    flags = [a.split("=", 1)[0] for a in argv if a.startswith("--")]
    if argv[0] == "clickgraph":
        assert argv[1] in SUBCOMMANDS, f"{where}: clickgraph has no subcommand {argv[1]!r}"
        sub = next(a for a in build_parser()._actions if a.dest == "command").choices[argv[1]]
        known = {s for action in sub._actions for s in action.option_strings}
        missing = set(flags) - known
        assert not missing, f"{where}: clickgraph {argv[1]} has no option {sorted(missing)}"
        return
    if argv[0] in ("python", "python3") and argv[1] == "-m":
        package = ROOT / argv[2].replace(".", "/")
        target = package / "__main__.py" if package.is_dir() or not package.with_suffix(".py").exists() \
            else package.with_suffix(".py")
        args = argv[3:]
    elif argv[0] in ("python", "python3"):
        target, args = repo_file(argv[1], where), argv[2:]
    else:
        target, args = repo_file(argv[0], where), argv[1:]
    assert target.is_file(), f"{where}: {' '.join(argv[:3])} needs {target.relative_to(ROOT)}, missing"
    missing = {a.split("=", 1)[0] for a in args if a.startswith("--")} - script_flags(target)
    assert not missing, f"{where}: {target.relative_to(ROOT)} declares no option {sorted(missing)}"


def repo_file(path: str, where: str) -> Path:
    path = path.removeprefix("local://")
    assert path.startswith(IMAGE_SRC), f"{where}: {path} is not under {IMAGE_SRC} (the repo in the image)"
    return ROOT / path.removeprefix(IMAGE_SRC)


def test_spark_applications_run_repo_scripts_with_flags_they_declare():
    apps = objects("SparkApplication")
    assert {a["metadata"]["name"] for a in apps} == {"clickgraph-build-graph", "clickgraph-partition"}
    for app in apps:
        main = app["spec"]["mainApplicationFile"]
        assert main.startswith("local://" + IMAGE_SRC + "spark_jobs/")
        check_command([main, *app["spec"]["arguments"]], app["metadata"]["name"])


def test_rayjob_entrypoint_exists_with_its_flags():
    entrypoint = shlex.split(only("RayJob", "train")["spec"]["entrypoint"])
    assert entrypoint[:3] == ["python", "-m", "trainer"]
    check_command(entrypoint, "rayjob-train.yaml")


def test_container_commands_exist_with_their_flags():
    commands = [(where, c["command"] + c.get("args", [])) for where, c in containers() if "command" in c]
    assert commands, "the CronJob at least sets a command"
    for where, argv in commands:
        check_command(argv, where)


def job_commands(job: dict) -> list[list[str]]:
    """argv of a Job's containers in the order they run: init containers, then the others."""
    pod = job["spec"]["template"]["spec"]
    return [c["command"] + c.get("args", []) for c in pod.get("initContainers", []) + pod["containers"]]


def test_daily_steps_add_flags_that_their_programs_declare():
    daily = load_daily()
    made = []
    for file in RUN_TEMPLATES:
        template = yaml.safe_load((K8S / file).read_text())
        obj = daily.render(template, "2026-03-25", "ns", {})
        if obj["kind"] == "SparkApplication":
            argvs = [[obj["spec"]["mainApplicationFile"], *obj["spec"]["arguments"]]]
        elif obj["kind"] == "Job":
            argvs = job_commands(obj)
        else:
            argvs = [shlex.split(obj["spec"]["entrypoint"])]
        for argv in argvs:
            check_command(argv, f"daily.py {file}")
        made.append(argvs)
    assert made[0][0][-2:] == ["--day", "2026-03-25"]
    assert made[1][0][-1] == "--place-new" and "--num-parts" in made[1][0]
    assert made[2][0][-1] == "--continue"
    evaluate, export = made[3]
    assert evaluate[:2] == ["clickgraph", "evaluate"] and "--json" in evaluate and "--cutoff" not in evaluate
    assert export[:2] == ["clickgraph", "export"] and export[-2:] == ["--cutoff", "2026-03-26"]
    assert export.count("--cutoff") == 1
    for argv in (evaluate, export):
        assert argv[argv.index("--config") + 1] == "/etc/clickgraph/config.yaml"
    # the end of the day: across a month's and a year's end, and in a leap year
    job = yaml.safe_load((K8S / "job-evaluate-export.yaml").read_text())
    for day, cutoff in (("2026-02-28", "2026-03-01"), ("2028-02-28", "2028-02-29"),
                        ("2026-12-31", "2027-01-01")):
        assert job_commands(daily.render(job, day, "ns", {}))[1][-2:] == ["--cutoff", cutoff]
    assert "--cutoff" not in job_commands(job)[1], "the template is not modified"


def test_daily_refuses_a_job_template_without_one_export_container():
    daily = load_daily()
    job = yaml.safe_load((K8S / "job-evaluate-export.yaml").read_text())
    job["spec"]["template"]["spec"]["containers"][0]["command"] = ["clickgraph", "evaluate"]
    with pytest.raises(ValueError, match="clickgraph export"):
        daily.render(job, "2026-03-25", "ns", {})


def test_clickgraph_commands_in_the_docs_exist():
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    lines = [line.split("#")[0].strip() for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
             for line in block.splitlines()]
    commands = [shlex.split(line) for line in lines if line.startswith("clickgraph ")]
    for argv in commands:
        check_command([a for a in argv if "$(" not in a], "docs/kubernetes.md")


# ------------------------------------------------------------------ security and resources


def assert_container_security(where: str, sc: dict) -> None:
    assert sc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
    assert isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0, f"{where}: runAsUser"
    assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
    assert sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
    assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities.drop [ALL]"
    assert "privileged" not in sc or sc["privileged"] is False, where


def test_every_container_is_non_root_with_requests_and_limits():
    found = containers()
    assert len(found) >= 6, "CronJob, Ray head, Ray worker, RayJob submitter, evaluate, export"
    for where, c in found:
        assert_container_security(where, c.get("securityContext", {}))
        for section in ("requests", "limits"):
            got = c.get("resources", {}).get(section, {})
            assert {"cpu", "memory"} <= set(got), f"{where}: resources.{section} needs cpu and memory"


def test_every_pod_runs_as_non_root_with_seccomp_and_writable_tmp():
    for where, spec in pod_specs():
        sc = spec.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) > 0, where
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: /tmp emptyDir"


def test_spark_driver_and_executors_are_non_root_with_sized_resources():
    for where, role, app in spark_roles():
        assert_container_security(where, role.get("securityContext", {}))
        assert role["podSecurityContext"]["runAsNonRoot"] is True, where
        for key in ("cores", "coreLimit", "memory", "memoryOverhead"):
            assert key in role, f"{where}: {key}"
        assert float(role["coreLimit"]) >= role["cores"], where
        assert re.fullmatch(r"\d+[mg]", role["memory"]) and re.fullmatch(r"\d+[mg]", role["memoryOverhead"])
        volumes = {v["name"]: v for v in app["volumes"]}
        tmp = [m for m in role["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: /tmp emptyDir"
    driver_accounts = {app["metadata"]["name"]: app["spec"]["driver"]["serviceAccount"]
                       for app in objects("SparkApplication")}
    assert set(driver_accounts.values()) == {"clickgraph-spark"}


def test_spark_driver_role_lets_it_manage_executors():
    role = only("Role", "spark")
    binding = only("RoleBinding", "spark")
    granted = {(res, verb) for rule in role["rules"] if rule["apiGroups"] == [""]
               for res in rule["resources"] for verb in rule["verbs"]}
    for res in ("pods", "services", "configmaps"):
        for verb in ("create", "get", "list", "watch", "delete"):
            assert (res, verb) in granted, f"spark driver role lacks {verb} {res}"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == "clickgraph-spark"


def test_daily_job_role_covers_exactly_what_daily_py_calls():
    daily = load_daily()
    role = only("Role", "daily")
    granted = {(group, res): set(rule["verbs"]) for rule in role["rules"]
               for group in rule["apiGroups"] for res in rule["resources"]}
    called = set()
    for _, collection in daily.STEPS:
        _, _, group, _, _, _, resource = collection.split("/")
        assert granted.get((group, resource)) == {"create", "get", "delete"}, (group, resource)
        called.add((group, resource))
    assert set(granted) == called, f"the daily role grants more than daily.py calls: {set(granted) - called}"
    assert {("batch", "jobs")} < called
    cron = only("CronJob", "daily")
    account = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]
    assert account == only("RoleBinding", "daily")["subjects"][0]["name"]


def test_images_are_pinned_to_this_version():
    images = [i for i in walk(list(manifests().values()), "image")]
    assert len(images) >= 6
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{image}: no tag"
        assert tag != "latest" and not tag.startswith("latest"), image
        assert tag.startswith(clickgraph.__version__ + "-"), f"{image}: tag is not {clickgraph.__version__}-*"
    workers = only("RayJob", "train")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert all(c["image"].endswith("-cuda") for g in workers for c in g["template"]["spec"]["containers"])


def dockerfile() -> tuple[dict[str, str], list[tuple[str, str | None]], dict[str, str | None]]:
    """(global ARG defaults, [(FROM image, stage name)], {stage: last USER})."""
    args, froms, users, stage = {}, [], {}, None
    for line in (K8S / "Dockerfile").read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "ARG" and stage is None and "=" in words[1]:
            key, value = words[1].split("=", 1)
            args[key] = value
        elif words[0] == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], words[1])
            stage = words[3] if len(words) > 3 and words[2].upper() == "AS" else None
            froms.append((image, stage))
            users[stage] = users.get(image)
        elif words[0] == "USER":
            users[stage] = words[1]
    return args, froms, users


def test_dockerfile_pins_its_bases_and_runs_as_a_numeric_non_root_user():
    args, froms, users = dockerfile()
    stages = {stage for _, stage in froms}
    assert {"cpu", "cuda"} <= stages
    for image, _ in froms:
        if image in stages:
            continue
        repo, _, tag = image.split("@")[0].rpartition(":")
        assert repo and tag and tag != "latest", f"FROM {image}: pin a tag"
        assert re.search(r"\d+\.\d+", tag), f"FROM {image}: the tag should name a version"
    for target in ("cpu", "cuda"):
        user = users[target]
        assert user is not None, f"target {target} has no USER"
        uid = user.split(":")[0]
        assert uid.isdigit() and int(uid) > 0, f"target {target}: USER {user} (numeric, not root)"
    text = (K8S / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text
    baked = re.search(r"(?im)^\s*(ENV|ARG)\s+\S*(KEY|SECRET|TOKEN|PASSWORD)", text)
    assert not baked, "no secrets in the image"


def test_image_versions_match_the_rest_of_the_repo():
    args, _, _ = dockerfile()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^TORCH_VERSION \?= {re.escape(args['TORCH_VERSION'])}$", makefile, re.M)
    assert only("RayJob", "train")["spec"]["rayClusterSpec"]["rayVersion"] == args["RAY_VERSION"]


def test_build_context_ignores_local_state():
    ignored = set((K8S / "Dockerfile.dockerignore").read_text().split())
    assert {".git", ".venv", "runs"} <= ignored


def test_no_manifest_holds_credentials():
    assert not objects("Secret"), "Secrets are created by hand (docs/kubernetes.md), never committed"
    text = "\n".join(p.read_text() for p in K8S.iterdir() if p.is_file())
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), "an AWS access key id"
    assert not re.search(r"(?i)(access|secret)[._-]?key\s*[:=]\s*\S{8,}", text), "an inline key"
    envs = [e for env in walk(list(manifests().values()), "env") for e in env]
    for e in envs:
        if CREDENTIAL_NAME.search(e["name"]):
            assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), e["name"]
    refs = [r for lst in walk(list(manifests().values()), "envFrom") for r in lst]
    assert refs, "object-store credentials come through envFrom"
    for ref in refs:
        assert set(ref) == {"secretRef"} and ref["secretRef"]["name"] == SECRET_NAME, ref
    config = yaml.safe_load(only("ConfigMap", "config")["data"]["config.yaml"])
    flat = yaml.safe_dump(config)
    assert not re.search(r"(?i)fs\.s3a\.(access|secret|session)\.key", flat)


def test_pods_that_read_data_get_the_secret_and_the_daily_job_does_not():
    with_secret = [where for where, c in containers() if c.get("envFrom")]
    assert any("ray-head" in w for w in with_secret) and any("ray-worker" in w for w in with_secret)
    for where, role, _ in spark_roles():
        assert role["envFrom"] == [{"secretRef": {"name": SECRET_NAME}}], where
    assert not any("CronJob" in w for w in with_secret), "the daily job needs no data access"
    job = [(where, c) for where, c in containers() if where.startswith("Job/clickgraph-evaluate-export")]
    assert {c["name"] for _, c in job} == {"evaluate", "export"}
    for where, c in job:
        assert c["envFrom"] == [{"secretRef": {"name": SECRET_NAME}}], where


# ------------------------------------------------------------------ consistency of the pipeline


def test_configmap_holds_a_valid_clickgraph_config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(only("ConfigMap", "config")["data"]["config.yaml"])
    cfg = load_config(path)
    assert cfg.ray.address == "auto", "the RayJob entrypoint joins the cluster it runs on"
    assert cfg.paths.partitions.startswith("/"), "partition writes shards to a mounted path"


def test_worker_count_agrees_everywhere():
    config = yaml.safe_load(only("ConfigMap", "config")["data"]["config.yaml"])
    arguments = only("SparkApplication", "partition")["spec"]["arguments"]
    num_parts = int(arguments[arguments.index("--num-parts") + 1])
    rayjob = only("RayJob", "train")
    entry = shlex.split(rayjob["spec"]["entrypoint"])
    workers = int(entry[entry.index("--workers") + 1])
    gpu_groups = [g for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
                  if any("nvidia.com/gpu" in c["resources"]["limits"]
                         for c in g["template"]["spec"]["containers"])]
    replicas = sum(g["replicas"] for g in gpu_groups)
    assert num_parts == workers == replicas == config["partition"]["num_parts"] \
        == config["resources"]["workers"]
    for group in gpu_groups:
        assert group["minReplicas"] == group["maxReplicas"] == group["replicas"]
        for c in group["template"]["spec"]["containers"]:
            gpus = [c["resources"][section]["nvidia.com/gpu"] for section in ("requests", "limits")]
            assert gpus == [1, 1]


def mounts_of(volumes: list[dict], mounts: list[dict]) -> dict[str, dict]:
    """mount path -> the volume mounted there."""
    by_name = {v["name"]: v for v in volumes}
    return {m["mountPath"]: by_name[m["name"]] for m in mounts}


def test_config_and_shared_partitions_are_mounted_where_they_are_used():
    config = yaml.safe_load(only("ConfigMap", "config")["data"]["config.yaml"])
    partitions_dir = config["paths"]["partitions"]
    claim = only("PersistentVolumeClaim", "partitions")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    for where, role, app in spark_roles():
        mounted = mounts_of(app["volumes"], role["volumeMounts"])
        assert mounted["/etc/clickgraph"]["configMap"]["name"] == "clickgraph-config", where
        if "partition" in where:
            assert mounted[partitions_dir]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    for where, spec in pod_specs():
        if "RayJob" in where and "submitter" not in where:
            for c in spec["containers"]:
                mounted = mounts_of(spec["volumes"], c["volumeMounts"])
                assert mounted["/etc/clickgraph"]["configMap"]["name"] == "clickgraph-config", where
                shared = mounted[partitions_dir]["persistentVolumeClaim"]["claimName"]
                assert shared == claim["metadata"]["name"], where
                assert mounted["/dev/shm"]["emptyDir"]["medium"] == "Memory", where


def test_evaluate_export_job_reads_and_writes_where_the_config_points():
    """The config is the ConfigMap's; every path evaluate and export read or write is in the
    object store (the Secret reaches it) or on a volume mounted in both containers."""
    config = yaml.safe_load(only("ConfigMap", "config")["data"]["config.yaml"])
    job = only("Job", "evaluate-export")
    pod = job["spec"]["template"]["spec"]
    for c in pod["initContainers"] + pod["containers"]:
        mounted = mounts_of(pod["volumes"], c["volumeMounts"])
        assert mounted["/etc/clickgraph"]["configMap"]["name"] == "clickgraph-config", c["name"]
        for stage in ("graph", "train", "eval", "embeddings"):
            url = config["paths"].get(stage) or config["paths"]["root"].rstrip("/") + "/" + stage
            if "://" in url and not url.startswith("file://"):
                continue
            local = url.removeprefix("file://")
            volume = next((v for path, v in mounted.items() if local.startswith(path.rstrip("/") + "/")
                           or local == path), None)
            assert volume and "persistentVolumeClaim" in volume, f"{c['name']}: paths.{stage} {url}"
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert c["resources"]["requests"] == c["resources"]["limits"], f"{c['name']}: guaranteed QoS"
        threads = {e["name"]: e["value"] for e in c.get("env", [])}.get("OMP_NUM_THREADS")
        assert threads == str(c["resources"]["limits"]["cpu"]), f"{c['name']}: OpenMP threads = CPU limit"
    assert pod["automountServiceAccountToken"] is False
    account = pod["serviceAccountName"]
    assert any(sa["metadata"]["name"] == account for sa in objects("ServiceAccount"))
    assert not [b for b in objects("RoleBinding") if any(s["name"] == account for s in b["subjects"])], \
        "the evaluate/export pod needs no Kubernetes API access"


def test_evaluate_export_job_is_bounded_and_cleaned_up():
    job = only("Job", "evaluate-export")["spec"]
    assert isinstance(job["backoffLimit"], int) and job["backoffLimit"] >= 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert isinstance(job["ttlSecondsAfterFinished"], int) and job["ttlSecondsAfterFinished"] > 0
    # the Job's own deadline ends it (as failed) before daily.py stops waiting on it
    cron_pod = only("CronJob", "daily")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    args = cron_pod["containers"][0]["args"]
    step_timeout_s = float(args[args.index("--step-timeout-hours") + 1]) * 3600
    assert isinstance(job["activeDeadlineSeconds"], int) and 0 < job["activeDeadlineSeconds"] < step_timeout_s
    for rule in job.get("podFailurePolicy", {}).get("rules", []):
        if rule["action"] == "Ignore":
            disruption = {"type": "DisruptionTarget", "status": "True"}
            assert rule["onPodConditions"] == [disruption], "ignore only disruptions"


def test_cronjob_never_overlaps_and_is_bounded():
    cron = only("CronJob", "daily")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert isinstance(cron["startingDeadlineSeconds"], int) and cron["startingDeadlineSeconds"] > 0
    assert cron["successfulJobsHistoryLimit"] >= 1 and cron["failedJobsHistoryLimit"] >= 1
    job = cron["jobTemplate"]["spec"]
    assert isinstance(job["backoffLimit"], int)
    assert job["activeDeadlineSeconds"] < 24 * 3600, "a day's run must end before the next starts"
    assert len(cron["schedule"].split()) == 5 and cron["timeZone"] == "Etc/UTC"


def test_ray_endpoints_stay_inside_the_namespace():
    rayjob = only("RayJob", "train")["spec"]
    assert rayjob["shutdownAfterJobFinishes"] is True
    assert isinstance(rayjob["ttlSecondsAfterFinished"], int)
    head = rayjob["rayClusterSpec"]["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert not objects("Ingress") and not [s for s in objects("Service")
                                           if s["spec"].get("type") in ("NodePort", "LoadBalancer")]
    head_labels = head["template"]["metadata"]["labels"]
    policies = objects("NetworkPolicy")
    guarding = [p for p in policies
                if set(p["spec"]["podSelector"]["matchLabels"].items()) <= set(head_labels.items())]
    assert guarding, "no NetworkPolicy selects the Ray head"
    for policy in guarding:
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for rule in policy["spec"]["ingress"]:
            for peer in rule["from"]:
                # a bare namespaceSelector would admit whole namespaces
                assert "podSelector" in peer, f"{policy['metadata']['name']}: peer without podSelector"
                if "namespaceSelector" in peer:
                    assert peer["namespaceSelector"].get("matchLabels"), "namespaceSelector {} admits all"
                    assert {p["port"] for p in rule["ports"]} <= {8265}
    ports = {p["port"] for policy in guarding for rule in policy["spec"]["ingress"]
             for p in rule.get("ports", [])}
    assert {8265, 10001} <= ports
    internal = [p for p in guarding if any("ports" not in r for r in p["spec"]["ingress"])]
    for policy in internal:  # all ports: only from other Ray pods of this deployment
        for rule in policy["spec"]["ingress"]:
            if "ports" not in rule:
                assert all(peer["podSelector"].get("matchLabels") for peer in rule["from"])
                assert all("namespaceSelector" not in peer for peer in rule["from"])


# ------------------------------------------------------------------ scripts shipped in the image


def test_daily_render_names_steps_by_day_and_swaps_images():
    daily = load_daily()
    template = yaml.safe_load((K8S / "rayjob-train.yaml").read_text())
    cpu = "registry.example.com/clickgraph:0.1.0-cpu"
    obj = daily.render(template, "2026-03-25", "other", {cpu: "mirror/clickgraph:0.1.0-cpu"})
    assert obj["metadata"] == {**obj["metadata"], "name": "clickgraph-train-20260325", "namespace": "other"}
    images = set(walk(obj, "image"))
    assert cpu not in images and "mirror/clickgraph:0.1.0-cpu" in images
    assert template["metadata"]["name"] == "clickgraph-train", "the template is not modified"
    assert daily.yesterday_utc(dt.datetime(2026, 3, 1, 0, 30, tzinfo=dt.UTC)) == "2026-02-28"
    assert daily.yesterday_utc(dt.datetime(2026, 3, 1, 23, 0, tzinfo=dt.timezone(dt.timedelta(hours=-3)))) \
        == "2026-03-01"
    with pytest.raises(ValueError):
        daily.parse_image_map("no-equals-sign")
    assert daily.parse_image_map(" a=b , c=d ") == {"a": "b", "c": "d"}


@pytest.mark.parametrize("kind,status,state", [
    ("SparkApplication", {"applicationState": {"state": "COMPLETED"}}, "succeeded"),
    ("SparkApplication", {"applicationState": {"state": "SUBMISSION_FAILED"}}, "failed"),
    ("SparkApplication", {"applicationState": {"state": "FAILED"}}, "failed"),
    ("SparkApplication", {"applicationState": {"state": "RUNNING"}}, "running"),
    ("SparkApplication", {}, "running"),
    ("RayJob", {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}, "succeeded"),
    ("RayJob", {"jobStatus": "FAILED"}, "failed"),
    ("RayJob", {"jobStatus": "STOPPED"}, "failed"),
    ("RayJob", {"jobDeploymentStatus": "Failed"}, "failed"),
    ("RayJob", {"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"}, "running"),
    ("Job", {"conditions": [{"type": "SuccessCriteriaMet", "status": "True"},
                            {"type": "Complete", "status": "True"}], "succeeded": 1}, "succeeded"),
    ("Job", {"conditions": [{"type": "FailureTarget", "status": "True"},
                            {"type": "Failed", "status": "True"}], "failed": 1}, "failed"),
    ("Job", {"conditions": [{"type": "FailureTarget", "status": "True"}], "failed": 1}, "running"),
    ("Job", {"conditions": [{"type": "Complete", "status": "False"}]}, "running"),
    ("Job", {"active": 1}, "running"),
    ("Job", {}, "running"),
])
def test_daily_reads_step_states(kind, status, state):
    assert load_daily().step_state({"kind": kind, "status": status}) == state


class FakeApi:
    """Answers daily.py's calls from a dict of objects; Jobs finish when first read back."""

    def __init__(self, existing: dict[str, dict]):
        self.items, self.calls = dict(existing), []

    def request(self, method, path, body=None):
        self.calls.append((method, path, body))
        if method == "POST":
            self.items[f"{path}/{body['metadata']['name']}"] = {**body, "status": {}}
            return body
        if path not in self.items:
            raise urllib.error.HTTPError(path, 404, "not found", {}, io.BytesIO(b"{}"))
        if method == "DELETE":
            return self.items.pop(path)
        obj = self.items[path]
        if not obj["status"]:
            obj["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
        return obj


def test_daily_reruns_a_failed_job_and_deletes_it_with_its_pods():
    daily = load_daily()
    job = daily.render(yaml.safe_load((K8S / "job-evaluate-export.yaml").read_text()), "2026-03-25", "ns", {})
    collection = daily.JOB_API.format(ns="ns")
    item = f"{collection}/{job['metadata']['name']}"
    api = FakeApi({item: {**job, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}})
    daily.run_step(api, collection, job, timeout_s=60, poll_s=0)
    methods = [(m, p) for m, p, _ in api.calls]
    assert methods == [("GET", item), ("DELETE", item), ("GET", item), ("POST", collection), ("GET", item)]
    delete_body = api.calls[1][2]
    assert delete_body["propagationPolicy"] in ("Background", "Foreground"), "a Job's pods are not orphaned"
    assert daily.step_state(api.items[item]) == "succeeded"


def test_daily_dry_run_prints_the_four_steps_in_order(capsys):
    assert load_daily().main(["--dry-run", "--day", "2026-03-25", "--namespace", "ns",
                              "--templates", str(K8S)]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"]["name"] for d in docs] == [
        "clickgraph-build-graph-20260325", "clickgraph-partition-20260325", "clickgraph-train-20260325",
        "clickgraph-evaluate-export-20260325"]
    assert [d["kind"] for d in docs] == ["SparkApplication", "SparkApplication", "RayJob", "Job"]
    for d in docs:
        assert d["metadata"]["namespace"] == "ns"
        assert d["metadata"]["labels"]["clickgraph/day"] == "2026-03-25"
    assert len(docs[3]["metadata"]["name"]) <= 63, "a Job's name must fit a label value"
    assert job_commands(docs[3])[1][-2:] == ["--cutoff", "2026-03-26"]
    with pytest.raises(ValueError):
        load_daily().main(["--dry-run", "--day", "2026-13-01", "--namespace", "ns"])


def test_image_entrypoint_starts_executors_and_passes_other_commands_through(tmp_path):
    java_home = tmp_path / "java"
    (java_home / "bin").mkdir(parents=True)
    (java_home / "bin" / "java").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (java_home / "bin" / "java").chmod(0o755)
    env = {
        "PATH": os.environ["PATH"], "JAVA_HOME": str(java_home), "SPARK_HOME": "/spark",
        "SPARK_EXECUTOR_MEMORY": "4g", "SPARK_DRIVER_URL": "spark://d:7078", "SPARK_EXECUTOR_ID": "3",
        "SPARK_EXECUTOR_CORES": "2", "SPARK_APPLICATION_ID": "app", "SPARK_EXECUTOR_POD_IP": "10.0.0.9",
        "SPARK_RESOURCE_PROFILE_ID": "0", "SPARK_EXECUTOR_POD_NAME": "exec-3",
        "SPARK_JAVA_OPT_10": "-Dten", "SPARK_JAVA_OPT_2": "-Dtwo", "SPARK_JAVA_OPT_0": "-Dzero",
    }
    entry = str(K8S / "spark-entrypoint.sh")
    out = subprocess.run(["bash", entry, "executor"], env=env, capture_output=True, text=True, check=True)
    args = out.stdout.splitlines()
    assert args[:3] == ["-Dzero", "-Dtwo", "-Dten"], "JVM options in numeric order"
    assert args[3:5] == ["-Xms4g", "-Xmx4g"]
    assert "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend" in args
    assert args[args.index("--executor-id") + 1] == "3" and args[args.index("--podName") + 1] == "exec-3"
    passed = subprocess.run(["bash", entry, "echo", "hello"], env=env, capture_output=True, text=True)
    assert passed.stdout == "hello\n"
    empty = subprocess.run(["bash", entry], env=env, capture_output=True, text=True)
    assert empty.returncode == 2
