//! The admin function refuses to start without a master key: every route
//! needs one, and running open would hand out budgets to anyone.

use std::process::Command;

fn run_admin(master_key: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_admin"));
    cmd.env("TABLE_NAME", "edge-budget-startup-test")
        .env_remove("MASTER_KEY")
        // Never reach a real Lambda runtime API, whatever the environment.
        .env_remove("AWS_LAMBDA_RUNTIME_API");
    if let Some(k) = master_key {
        cmd.env("MASTER_KEY", k);
    }
    cmd.output().expect("run the admin binary")
}

#[test]
fn refuses_to_start_without_master_key() {
    for master_key in [None, Some(""), Some("   ")] {
        let out = run_admin(master_key);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{master_key:?}: {stderr}");
        assert!(!out.status.success());
        assert!(
            stderr.contains("MASTER_KEY"),
            "{master_key:?}: stderr names MASTER_KEY: {stderr}"
        );
        assert!(stderr.contains("cannot start"), "{stderr}");
    }
}
