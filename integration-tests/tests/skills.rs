//! Local skills: the machine reports the user's Claude skills, the control
//! plane validates blocklists against them, and a Claude session sees only
//! the allowed ones through its private CLAUDE_CONFIG_DIR — with the user's
//! real config untouched.

use std::path::Path;

use oma_integration_tests::world::agent_text_of;
use oma_integration_tests::{Omactl, World, bin};
use oma_proto::pb;

fn skill(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir.join(name)).unwrap();
    std::fs::write(
        dir.join(name).join("SKILL.md"),
        format!("---\nname: {name}\ndescription: the {name} skill\n---\nDo {name} things.\n"),
    )
    .unwrap();
}

/// Every path under `root` with its content (or link target).
fn snapshot(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let key = path.strip_prefix(root).unwrap().display().to_string();
            if meta.file_type().is_symlink() {
                out.push((key, format!("-> {}", std::fs::read_link(&path).unwrap().display())));
            } else if meta.is_dir() {
                out.push((key, "dir".into()));
                stack.push(path);
            } else {
                out.push((
                    key,
                    String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn blocklisted_skills_are_hidden_from_a_claude_session() {
    let home = tempfile::tempdir().unwrap();
    let claude = home.path().join(".claude");
    for name in ["alpha", "beta", "gamma"] {
        skill(&claude.join("skills"), name);
    }
    let plugin_skills = claude.join("plugins/marketplaces/m/plugins/docs/skills");
    skill(&plugin_skills, "pdf");
    skill(&plugin_skills, "xlsx");
    std::fs::write(claude.join("settings.json"), "{}").unwrap();
    std::fs::write(claude.join(".credentials.json"), "{\"secret\":1}").unwrap();
    let before = snapshot(&claude);

    let agents_toml = format!(
        "[[agent]]\nid = \"claudish\"\nname = \"Scripted agent treated as Claude\"\ncommand = \"{}\"\nclaude = true\n\n\
         [[agent]]\nid = \"plain\"\nname = \"Scripted agent\"\ncommand = \"{}\"\n",
        bin("oma-test-agent").display(),
        bin("oma-test-agent").display()
    );
    let home_dir = home.path().display().to_string();
    let world = World::builder()
        .agents_toml(agents_toml)
        .prepare(move |machine| machine.env = vec![("HOME".into(), home_dir)])
        .acp_agent("claudish")
        .no_agent()
        .start()
        .await
        .unwrap();
    let (cp, machine) = (&world.cp, &world.machine);
    let claudish = world
        .runtime
        .clone()
        .unwrap()
        .manifest
        .unwrap()
        .acp_agents
        .into_iter()
        .find(|a| a.id == "claudish")
        .unwrap();
    let mut reported: Vec<String> = claudish.local_skills.iter().map(|s| s.id.clone()).collect();
    reported.sort();
    assert_eq!(reported, ["alpha", "beta", "gamma", "pdf", "xlsx"]);
    let pdf = claudish.local_skills.iter().find(|s| s.id == "pdf").unwrap();
    assert_eq!(pdf.source, pb::local_skill::Source::Plugin as i32);
    assert_eq!(pdf.plugin_name, "docs");

    // omactl shows them and sets the blocklist; unknown ids are refused.
    let omactl = Omactl::new(&cp.url(), &cp.admin_token).unwrap();
    let shown = omactl.run(&["runtimes", "get", &machine.runtime_id]).unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.contains("alpha") && shown.contains("docs"), "{shown}");
    let rejected = omactl
        .run(&[
            "agents",
            "create",
            "c1",
            "--runtime",
            &machine.runtime_id,
            "--acp-agent",
            "claudish",
            "--skill-blocklist",
            "nope",
        ])
        .unwrap();
    assert_eq!(rejected.status.code(), Some(6));
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(
        stderr.contains("unknown local skill(s) nope") && stderr.contains("alpha"),
        "{stderr}"
    );
    let agent = omactl
        .json(&[
            "agents",
            "create",
            "c1",
            "--runtime",
            &machine.runtime_id,
            "--acp-agent",
            "claudish",
            "--skill-blocklist",
            "beta,docs:xlsx",
        ])
        .unwrap();
    let agent_id = agent["id"].as_str().unwrap().to_owned();
    let session = omactl.json(&["sessions", "create", "--agent", &agent_id]).unwrap();
    let session_id = session["id"].as_str().unwrap().to_owned();

    let events = world.run_turn(&session_id, "list-skills\nenv CLAUDE_CONFIG_DIR").await;
    let text = events.iter().filter_map(agent_text_of).collect::<Vec<_>>().join("\n");
    assert!(text.contains("skills: alpha,gamma"), "{text}");
    let config_dir = machine.session_dir(&session_id).join(".claude-config");
    assert!(
        text.contains(&format!("CLAUDE_CONFIG_DIR={}", config_dir.display())) || text.contains(".claude-config"),
        "{text}"
    );
    let plugin_dir = config_dir.join("plugins/marketplaces/m/plugins/docs/skills");
    let mut plugin_skills: Vec<String> = std::fs::read_dir(&plugin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    plugin_skills.sort();
    assert_eq!(plugin_skills, ["pdf"], "plugin skills are filtered too");
    assert!(
        std::fs::symlink_metadata(config_dir.join("settings.json"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // A non-Claude agent ignores the blocklist and says so in the log.
    let plain = omactl
        .json(&[
            "agents",
            "create",
            "p1",
            "--runtime",
            &machine.runtime_id,
            "--acp-agent",
            "plain",
            "--skill-blocklist",
            "beta",
            "--allow-unknown-skills",
        ])
        .unwrap();
    let plain_session = omactl
        .json(&["sessions", "create", "--agent", plain["id"].as_str().unwrap()])
        .unwrap();
    let plain_session = plain_session["id"].as_str().unwrap().to_owned();
    let turn = world.prompt(&plain_session, "echo hi").await;
    world.collect(&turn).await;
    let all = world.collect_from(&turn, 1).await;
    assert!(
        all.iter().any(|e| matches!(&e.kind, Some(pb::session_event::Kind::Log(l)) if l.message.contains("ignores the local skill blocklist"))),
        "{all:#?}"
    );

    drop(world);
    assert_eq!(snapshot(&claude), before, "the user's real ~/.claude changed");
}
