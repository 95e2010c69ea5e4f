//! Models and executions through real FUSE mounts and `datumfs run` jobs: versions made by jobs
//! and from the CLI, approval, model:// inputs pinned at mount, parameters, code and exit
//! status in the execution record.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::Output;

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// Runs `datumfs run` in `cwd` with `args` before `--` and the shell script `script` after.
fn job(home: &Path, cwd: &Path, mnt: &Path, args: &[&str], script: &str) -> Output {
    command(home, &[])
        .current_dir(cwd)
        .arg("run")
        .arg(mnt)
        .args(["--cache-dir"])
        .arg(home.join("cache"))
        .args(args)
        .args(["--", "sh", "-c", script])
        .output()
        .expect("datumfs run")
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git").arg("-C").arg(dir).args(args).output().expect("git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn jobs_make_model_versions_that_are_approved_and_mounted_pinned() {
    if !fuse_available() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (home, src, code, mnt) =
        (t.path().join("home"), t.path().join("src"), t.path().join("code"), t.path().join("m"));
    for d in [&home, &src, &code] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(src.join("x"), b"data").unwrap();
    git(&code, &["init", "-q"]);
    git(&code, &["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "c1"]);
    let commit = git(&code, &["rev-parse", "HEAD"]);
    fs::write(code.join("untracked.py"), b"print(1)").unwrap();
    let input = format!("in=file://{}", src.display());
    // Two jobs, each writing weights for model churn (the second with tags and a release note).
    for n in 1..=2 {
        let meta = if n == 1 {
            r#"{"valohai.model-versions": ["model://churn/"]}"#.to_string()
        } else {
            r#"{"valohai.model-versions": [{"model_uri": "model://churn/", "model_version_tags": ["fast"], "model_release_note": "retrained"}]}"#
                .to_string()
        };
        let script = format!(
            "printf 'weights {n}' >\"$VH_OUTPUTS_DIR/model.pt\" && echo '{meta}' >\"$VH_OUTPUTS_DIR/model.pt.metadata.json\" \
             && printf 'cfg {n}' >\"$VH_OUTPUTS_DIR/config.txt\" \
             && echo '{{\"valohai.model-versions\": [\"model://churn/\"]}}' >\"$VH_OUTPUTS_DIR/config.txt.metadata.json\" \
             && cp \"$VH_CONFIG_DIR/parameters.json\" \"$VH_OUTPUTS_DIR/params-seen.json\""
        );
        let lr = format!("lr=0.0{n}");
        let exec = format!("train{n}");
        ok(
            job(
                &home,
                &code,
                &mnt,
                &["--input", &input, "--execution", &exec, "--param", &lr, "--param", "name=run"],
                &script,
            ),
            "job",
        );
    }
    assert!(!mnt.exists(), "the mountpoint datumfs run made is gone after the job");
    let run = |args: &[&str]| command(&home, &[]).args(args).output().unwrap();
    let model = json(&run(&["model", "show", "churn", "--json"]));
    let versions = model["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "one version per job, both files in it: {model}");
    assert_eq!((versions[0]["version"].as_str(), versions[0]["files"].as_u64()), (Some("v1"), Some(2)));
    assert_eq!((versions[1]["execution"].as_str(), versions[1]["state"].as_str()), (Some("train2"), Some("pending")));
    assert_eq!(versions[1]["tags"], serde_json::json!(["fast"]));
    assert_eq!(versions[1]["release_note"], "retrained");

    // Nothing approved yet: model://churn/approved is refused at mount, saying why.
    let m = t.path().join("m2");
    fs::create_dir_all(&m).unwrap();
    let _guard = MountGuard(m.clone());
    let out = run(&["mount", m.to_str().unwrap(), "--input", "p=model://churn/approved"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no approved version"), "{err}");

    ok(run(&["model", "version", "approve", "churn/v1", "--reason", "validated"]), "approve");
    ok(run(&["model", "version", "reject", "churn/v2", "--reason", "drift"]), "reject");
    let v1 = json(&run(&["model", "show", "churn/approved", "--json"]));
    assert_eq!((v1["version"].as_str(), v1["state"].as_str()), (Some("v1"), Some("approved")));
    assert_eq!(v1["history"][0]["reason"], "validated");

    let serve = t.path().join("serve");
    fs::create_dir_all(&serve).unwrap();
    let _g = MountGuard(serve.clone());
    ok(
        run(&[
            "mount",
            serve.to_str().unwrap(),
            "--cache-dir",
            home.join("cache4").to_str().unwrap(),
            "--input",
            "prod=model://churn/approved",
            "--input",
            "last=model://churn/latest",
            "--execution",
            "serve",
        ]),
        "mount models",
    );
    assert_eq!(fs::read(serve.join("inputs/prod/model.pt")).unwrap(), b"weights 1");
    assert_eq!(fs::read(serve.join("inputs/last/model.pt")).unwrap(), b"weights 2");
    assert_eq!(fs::read(serve.join("inputs/last/config.txt")).unwrap(), b"cfg 2");
    let inputs: serde_json::Value =
        serde_json::from_slice(&fs::read(serve.join("config/inputs.json")).unwrap()).unwrap();
    assert!(inputs["prod"]["files"].as_array().is_some_and(|f| f.len() == 2), "{inputs}");
    ok(run(&["unmount", serve.to_str().unwrap()]), "unmount");
    let serving = json(&run(&["execution", "show", "serve", "--json"]));
    let read: Vec<String> = serving["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["datasets"].as_array().cloned().unwrap_or_default())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(
        read.contains(&"model://churn/v1".to_string()) && read.contains(&"model://churn/v2".to_string()),
        "{serving}"
    );

    // Executions: parameters (typed), code, exit status, newest first.
    let e2 = json(&run(&["execution", "show", "train2", "--json"]));
    assert_eq!(e2["parameters"], serde_json::json!({ "lr": 0.02, "name": "run" }), "{e2}");
    assert_eq!(e2["code"]["commit"].as_str(), Some(commit.as_str()));
    assert_eq!(e2["code"]["dirty"], true, "an untracked file makes the checkout dirty");
    assert_eq!((e2["exit_status"].as_i64(), e2["status"].as_str()), (Some(0), Some("succeeded")));
    let list = json(&run(&["execution", "ls", "--json"]));
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["serve", "train2", "train1"], "newest first");

    // The job saw its parameters as config/parameters.json.
    let seen = json(&run(&["datum", "ls", "--execution", "train1", "--json"]));
    let params_datum = seen
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "params-seen.json")
        .unwrap_or_else(|| panic!("no params-seen.json in {seen}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dest = t.path().join("params.json");
    ok(run(&["datum", "get", &params_datum, dest.to_str().unwrap()]), "datum get");
    let p: serde_json::Value = serde_json::from_slice(&fs::read(&dest).unwrap()).unwrap();
    assert_eq!(p, serde_json::json!({ "lr": 0.01, "name": "run" }));

    // Two runs over an input that changed in between: the second's record warns, naming both
    // contents and the execution that last read the old one.
    let read_x = "cat \"$VH_INPUTS_DIR/in/x\" >/dev/null";
    ok(job(&home, &code, &mnt, &["--input", &input, "--execution", "reader1"], read_x), "reader1");
    fs::write(src.join("x"), b"changed data").unwrap();
    ok(job(&home, &code, &mnt, &["--input", &input, "--execution", "reader2"], read_x), "reader2");
    let r1 = json(&run(&["execution", "show", "reader1", "--json"]));
    assert!(r1["warnings"].is_null(), "the first read warns of nothing: {r1}");
    let r2 = json(&run(&["execution", "show", "reader2", "--json"]));
    let w = r2["warnings"][0].as_str().unwrap_or_else(|| panic!("no warning in {r2}"));
    assert!(
        w.contains(&sha256(b"data")) && w.contains(&sha256(b"changed data")) && w.contains("by execution reader1"),
        "{w}"
    );
    let listed = json(&run(&["execution", "ls", "--json"]));
    let entry = listed.as_array().unwrap().iter().find(|e| e["id"] == "reader2").unwrap();
    assert_eq!(entry["warnings"].as_array().map(Vec::len), Some(1), "{entry}");

    // A version from the CLI: the next number.
    let weights = t.path().join("w.bin");
    fs::write(&weights, b"hand made").unwrap();
    let v3 = json(&run(&["model", "version", "create", "churn", "--add", weights.to_str().unwrap(), "--json"]));
    assert_eq!(v3["uri"], "model://churn/v3");
    let failed = job(
        &home,
        &code,
        &mnt,
        &["--input", &input, "--execution", "train3"],
        "echo to-stdout; echo to-stderr >&2; exit 3",
    );
    assert_eq!(failed.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&failed.stdout).contains("to-stdout"), "the output still reaches the caller");
    assert!(String::from_utf8_lossy(&failed.stderr).contains("to-stderr"));
    let logs = ok(run(&["execution", "logs", "train3"]), "execution logs");
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(text.contains("to-stdout") && text.contains("to-stderr"), "the log keeps both streams: {text}");
    assert_eq!(run(&["execution", "logs", "serve"]).status.code(), Some(1), "a plain mount has no log");
    let e3 = json(&run(&["execution", "show", "train3", "--json"]));
    assert_eq!((e3["exit_status"].as_i64(), e3["status"].as_str()), (Some(3), Some("failed (3)")));
}

#[test]
fn projects_keep_two_teams_names_apart_in_one_store() {
    if !fuse_available() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (home, src, mnt) = (t.path().join("home"), t.path().join("src"), t.path().join("m"));
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&home).unwrap();
    fs::write(src.join("x"), b"x").unwrap();
    let run = |args: &[&str]| command(&home, &[]).args(args).output().unwrap();
    let out = run(&["datum", "ls", "--project", "team-a"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("project create team-a"), "an unknown project is named: {err}");
    ok(run(&["project", "create", "team-a"]), "create");
    ok(run(&["project", "create", "team-b"]), "create");
    assert!(!run(&["project", "create", "team-b"]).status.success(), "a project is made once");
    let input = format!("in=file://{}", src.display());
    // Both teams use the same alias and dataset names, from two separate jobs (processes).
    for team in ["team-a", "team-b"] {
        let script = format!(
            "printf 'weights of {team}' >\"$VH_OUTPUTS_DIR/w.bin\" && echo '{{\"valohai.alias\": \"best\", \
             \"valohai.dataset-versions\": [\"dataset://shared/v1\"]}}' >\"$VH_OUTPUTS_DIR/w.bin.metadata.json\""
        );
        let exec = format!("job-{team}");
        ok(job(&home, &home, &mnt, &["--input", &input, "--project", team, "--execution", &exec], &script), team);
    }
    for team in ["team-a", "team-b"] {
        let d = json(&run(&["datum", "show", "best", "--project", team, "--json"]));
        let dest = t.path().join(format!("{team}.bin"));
        ok(run(&["datum", "get", d["id"].as_str().unwrap(), dest.to_str().unwrap(), "--project", team]), "get");
        assert_eq!(fs::read(&dest).unwrap(), format!("weights of {team}").as_bytes(), "{team}'s alias is its own");
        let shown = json(&run(&["project", "show", team, "--json"]));
        assert_eq!((shown["datums"].as_u64(), shown["datasets"].as_u64()), (Some(1), Some(1)), "{shown}");
    }
    // The default project sees neither; the other team's execution is not there either.
    assert_eq!(json(&run(&["datum", "ls", "--json"])), serde_json::json!([]));
    assert!(!run(&["execution", "show", "job-team-a", "--project", "team-b"]).status.success());
    assert_eq!(json(&run(&["project", "ls", "--json"])), serde_json::json!(["team-a", "team-b"]));
    // A mount in a project resolves that project's names.
    let m = t.path().join("serve");
    fs::create_dir_all(&m).unwrap();
    let _g = MountGuard(m.clone());
    let cache = home.join("cache2");
    ok(
        run(&[
            "mount",
            m.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--project",
            "team-b",
            "--input",
            "w=datum://best",
            "--input",
            "d=dataset://shared/v1",
        ]),
        "mount in a project",
    );
    assert_eq!(fs::read(m.join("inputs/w/w.bin")).unwrap(), b"weights of team-b");
    assert_eq!(fs::read(m.join("inputs/d/w.bin")).unwrap(), b"weights of team-b");
    ok(run(&["unmount", m.to_str().unwrap()]), "unmount");
}
