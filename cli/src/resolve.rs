//! Names accepted wherever ids are: an argument that has the shape of an id
//! of the resource (`agt_` and 32 hex digits) is used as that id; anything
//! else is looked up by name among the resources the caller can list, and
//! must match exactly one.

use anyhow::Result;
use oma_proto::{
    ids::{AgentId, RuntimeId, UserId},
    pb,
};

use crate::{
    commands::Ctx,
    connection::collect_pages,
    error::{Failure, exit},
};

/// A resource that has a human name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    User,
    Runtime,
    Agent,
}

impl Resource {
    fn noun(self) -> &'static str {
        match self {
            Resource::User => "user",
            Resource::Runtime => "runtime",
            Resource::Agent => "agent",
        }
    }

    fn article(self) -> &'static str {
        match self {
            Resource::Agent => "an",
            Resource::User | Resource::Runtime => "a",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Resource::User => UserId::PREFIX,
            Resource::Runtime => RuntimeId::PREFIX,
            Resource::Agent => AgentId::PREFIX,
        }
    }

    /// Whether `arg` has the shape of an id of this resource.
    fn is_id(self, arg: &str) -> bool {
        match self {
            Resource::User => UserId::parse("id", arg).is_ok(),
            Resource::Runtime => RuntimeId::parse("id", arg).is_ok(),
            Resource::Agent => AgentId::parse("id", arg).is_ok(),
        }
    }
}

/// The id `arg` stands for: `arg` itself when it has the shape of an id of
/// `resource`, else the id of the one `resource` named `arg`. `flag` names
/// the argument in errors.
pub async fn id(ctx: &Ctx, resource: Resource, flag: &str, arg: &str) -> Result<String> {
    if resource.is_id(arg) {
        return Ok(arg.to_owned());
    }
    if arg.trim().is_empty() {
        return Err(Failure::usage(format!(
            "{flag} is empty: give {} {} id ({}_…) or name",
            resource.article(),
            resource.noun(),
            resource.prefix()
        ))
        .into());
    }
    let named = names(ctx, resource).await?;
    Ok(pick(resource, arg, named)?)
}

/// The id and name of every `resource` the caller can list.
async fn names(ctx: &Ctx, resource: Resource) -> Result<Vec<(String, String)>> {
    let api = ctx.api().await?;
    let named = match resource {
        Resource::User => {
            let client = api.identity();
            collect_pages(None, |page| {
                let mut client = client.clone();
                async move {
                    let r = client
                        .list_users(pb::ListUsersRequest { page: Some(page) })
                        .await?
                        .into_inner();
                    Ok((r.users, r.next_page_token))
                }
            })
            .await?
            .into_iter()
            .map(|u| (u.id, u.name))
            .collect()
        }
        Resource::Runtime => {
            let client = api.runtimes();
            collect_pages(None, |page| {
                let mut client = client.clone();
                async move {
                    let r = client
                        .list_runtimes(pb::ListRuntimesRequest { page: Some(page) })
                        .await?
                        .into_inner();
                    Ok((r.runtimes, r.next_page_token))
                }
            })
            .await?
            .into_iter()
            .map(|r| (r.id, r.name))
            .collect()
        }
        Resource::Agent => {
            let client = api.agents();
            collect_pages(None, |page| {
                let mut client = client.clone();
                async move {
                    let r = client
                        .list_agents(pb::ListAgentsRequest { page: Some(page) })
                        .await?
                        .into_inner();
                    Ok((r.agents, r.next_page_token))
                }
            })
            .await?
            .into_iter()
            .map(|a| (a.id, a.spec.map(|s| s.name).unwrap_or_default()))
            .collect()
        }
    };
    Ok(named)
}

/// The id of the one candidate (id, name) named exactly `name`.
fn pick(resource: Resource, name: &str, candidates: Vec<(String, String)>) -> Result<String, Failure> {
    let mut ids: Vec<String> = candidates
        .into_iter()
        .filter(|(_, n)| n == name)
        .map(|(id, _)| id)
        .collect();
    let shown = crate::output::printable(name, false);
    match ids.len() {
        1 => Ok(ids.remove(0)),
        0 => Err(Failure::new(
            exit::NOT_FOUND,
            format!(
                "no {noun} is named {shown:?}, and it is not {} {noun} id ({}_ and 32 hex digits)",
                resource.article(),
                resource.prefix(),
                noun = resource.noun(),
            ),
        )),
        n => Err(Failure::new(
            exit::REJECTED,
            format!(
                "{n} {}s are named {shown:?} ({}): give the id of the one you mean",
                resource.noun(),
                ids.join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RT_A: &str = "rt_0123456789abcdef0123456789abcdef";
    const RT_B: &str = "rt_fedcba9876543210fedcba9876543210";

    fn runtimes() -> Vec<(String, String)> {
        vec![
            (RT_A.into(), "box".into()),
            (RT_B.into(), "box".into()),
            ("rt_c".into(), "laptop".into()),
        ]
    }

    #[test]
    fn ids_are_ids_and_anything_else_a_name() {
        assert!(Resource::Runtime.is_id(RT_A));
        assert!(!Resource::Agent.is_id(RT_A), "a runtime id is not an agent id");
        // A name may start like an id (agent names allow `_`).
        assert!(!Resource::Agent.is_id("agt_helper"));
    }

    #[test]
    fn a_name_matches_exactly_one() {
        assert_eq!(pick(Resource::Runtime, "laptop", runtimes()).unwrap(), "rt_c");
        let none = pick(Resource::Runtime, "Laptop", runtimes()).unwrap_err();
        assert_eq!(none.exit, exit::NOT_FOUND);
        assert_eq!(
            none.message,
            "no runtime is named \"Laptop\", and it is not a runtime id (rt_ and 32 hex digits)"
        );
        let agent = pick(Resource::Agent, "agt_x", vec![]).unwrap_err();
        assert!(
            agent
                .message
                .starts_with("no agent is named \"agt_x\", and it is not an agent id"),
            "{}",
            agent.message
        );
        let several = pick(Resource::Runtime, "box", runtimes()).unwrap_err();
        assert_eq!(several.exit, exit::REJECTED);
        assert_eq!(
            several.message,
            format!("2 runtimes are named \"box\" ({RT_A}, {RT_B}): give the id of the one you mean")
        );
    }
}
