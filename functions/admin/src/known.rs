//! The fields each admin route takes, as data: edge-budget's own fields
//! and LiteLLM's request fields (which LiteLLM's management client sends
//! and edge-budget keeps without acting on them). A body field in none of
//! a route's lists is a 400 naming it and the nearest known field
//! (`unknown field "budget_limit": did you mean "budget_limits"?`): a
//! typo in a money field must not store an uncapped entity.
//!
//! LiteLLM's lists are the fields of the pydantic request models in
//! `litellm/proxy/_types.py` (BerriAI/litellm, read at commit 00025c8),
//! base classes included; one list per model.

use budget_core::model::EntityKind;
use http_api::ApiError;
use serde_json::{Map, Value};

/// `GenerateRequestBase`: shared by the key and user requests.
const GENERATE_REQUEST_BASE: &[&str] = &[
    "key_alias",
    "duration",
    "models",
    "spend",
    "max_budget",
    "user_id",
    "team_id",
    "agent_id",
    "max_parallel_requests",
    "metadata",
    "tpm_limit",
    "rpm_limit",
    "budget_duration",
    "allowed_cache_controls",
    "config",
    "permissions",
    "model_max_budget",
    "model_rpm_limit",
    "model_tpm_limit",
    "guardrails",
    "policies",
    "prompts",
    "blocked",
    "aliases",
    "object_permission",
];

/// `KeyRequestBase(GenerateRequestBase)`.
const KEY_REQUEST_BASE: &[&str] = &[
    "key",
    "budget_id",
    "tags",
    "enforced_params",
    "allowed_routes",
    "allowed_passthrough_routes",
    "allowed_vector_store_indexes",
    "rpm_limit_type",
    "tpm_limit_type",
    "router_settings",
    "access_group_ids",
];

/// `GenerateKeyRequest(KeyRequestBase)`.
const GENERATE_KEY_REQUEST: &[&str] = &[
    "soft_budget",
    "send_invite_email",
    "key_type",
    "auto_rotate",
    "rotation_interval",
    "organization_id",
    "project_id",
];

/// `UpdateKeyRequest(KeyRequestBase)`.
const UPDATE_KEY_REQUEST: &[&str] = &[
    "key",
    "duration",
    "spend",
    "metadata",
    "temp_budget_increase",
    "temp_budget_expiry",
    "auto_rotate",
    "rotation_interval",
    "organization_id",
];

/// `KeyRequest` (/key/delete).
const KEY_REQUEST: &[&str] = &["keys", "key_aliases"];

/// `BlockKeyRequest` (/key/block, /key/unblock).
const BLOCK_KEY_REQUEST: &[&str] = &["key"];

/// `NewUserRequest(GenerateRequestBase)`.
const NEW_USER_REQUEST: &[&str] = &[
    "max_budget",
    "user_email",
    "user_alias",
    "user_role",
    "teams",
    "auto_create_key",
    "send_invite_email",
    "sso_user_id",
    "organizations",
    "password",
];

/// `UpdateUserRequest(UpdateUserRequestNoUserIDorEmail(GenerateRequestBase))`.
const UPDATE_USER_REQUEST: &[&str] = &[
    "password",
    "spend",
    "metadata",
    "user_alias",
    "user_role",
    "max_budget",
    "user_id",
    "user_email",
];

/// `DeleteUserRequest`.
const DELETE_USER_REQUEST: &[&str] = &["user_ids"];

/// `TeamBase`.
const TEAM_BASE: &[&str] = &[
    "team_alias",
    "team_id",
    "organization_id",
    "admins",
    "members",
    "members_with_roles",
    "team_member_permissions",
    "metadata",
    "tpm_limit",
    "rpm_limit",
    "max_budget",
    "soft_budget",
    "budget_duration",
    "models",
    "blocked",
    "router_settings",
    "access_group_ids",
];

/// `NewTeamRequest(TeamBase)`.
const NEW_TEAM_REQUEST: &[&str] = &[
    "model_aliases",
    "tags",
    "guardrails",
    "policies",
    "prompts",
    "object_permission",
    "allowed_passthrough_routes",
    "secret_manager_settings",
    "model_rpm_limit",
    "rpm_limit_type",
    "tpm_limit_type",
    "model_tpm_limit",
    "team_member_budget",
    "team_member_rpm_limit",
    "team_member_tpm_limit",
    "team_member_key_duration",
    "team_member_budget_duration",
    "allowed_vector_store_indexes",
    "enforced_batch_output_expires_after",
    "enforced_file_expires_after",
];

/// `UpdateTeamRequest`.
const UPDATE_TEAM_REQUEST: &[&str] = &[
    "team_id",
    "team_alias",
    "organization_id",
    "metadata",
    "tpm_limit",
    "rpm_limit",
    "max_budget",
    "soft_budget",
    "models",
    "blocked",
    "budget_duration",
    "tags",
    "model_aliases",
    "guardrails",
    "policies",
    "object_permission",
    "team_member_budget",
    "team_member_budget_duration",
    "team_member_rpm_limit",
    "team_member_tpm_limit",
    "team_member_key_duration",
    "allowed_passthrough_routes",
    "secret_manager_settings",
    "prompts",
    "model_rpm_limit",
    "model_tpm_limit",
    "allowed_vector_store_indexes",
    "enforced_batch_output_expires_after",
    "enforced_file_expires_after",
    "router_settings",
    "access_group_ids",
];

/// `DeleteTeamRequest`.
const DELETE_TEAM_REQUEST: &[&str] = &["team_ids"];

/// `LiteLLM_BudgetTable`: the budget fields an organization takes.
const BUDGET_TABLE: &[&str] = &[
    "budget_id",
    "soft_budget",
    "max_budget",
    "max_parallel_requests",
    "tpm_limit",
    "rpm_limit",
    "model_max_budget",
    "budget_duration",
    "budget_reset_at",
];

/// `NewOrganizationRequest(LiteLLM_BudgetTable)`.
const NEW_ORGANIZATION_REQUEST: &[&str] = &[
    "organization_id",
    "organization_alias",
    "models",
    "budget_id",
    "metadata",
    "object_permission",
];

/// `LiteLLM_OrganizationTableUpdate`.
const UPDATE_ORGANIZATION_REQUEST: &[&str] = &[
    "organization_id",
    "organization_alias",
    "budget_id",
    "spend",
    "metadata",
    "models",
    "updated_by",
    "object_permission",
];

/// `TeamMemberAddRequest(MemberAddRequest)`.
const TEAM_MEMBER_ADD_REQUEST: &[&str] = &["member", "team_id", "max_budget_in_team"];

/// `TeamMemberDeleteRequest`.
const TEAM_MEMBER_DELETE_REQUEST: &[&str] = &["user_id", "user_email", "team_id"];

/// `TeamMemberUpdateRequest(TeamMemberDeleteRequest)`.
const TEAM_MEMBER_UPDATE_REQUEST: &[&str] =
    &["max_budget_in_team", "role", "tpm_limit", "rpm_limit"];

/// edge-budget's own fields on a member budget: its windows beside
/// `max_budget_in_team`.
const OURS_MEMBER: &[&str] = &["budget_duration", "budget_limits"];

/// `NewCustomerRequest(BudgetNewRequest)` (its budget fields are
/// [`BUDGET_TABLE`]'s).
const NEW_CUSTOMER_REQUEST: &[&str] = &[
    "user_id",
    "alias",
    "blocked",
    "max_budget",
    "budget_id",
    "allowed_model_region",
    "default_model",
    "spend",
    "metadata",
    "object_permission",
];

/// `TagNewRequest` / `TagUpdateRequest` (budget fields: [`BUDGET_TABLE`]).
const TAG_REQUEST: &[&str] = &["name", "description", "models", "model_info", "metadata"];

/// `TagDeleteRequest`.
const TAG_DELETE_REQUEST: &[&str] = &["name"];

/// `TagInfoRequest`.
const TAG_INFO_REQUEST: &[&str] = &["names"];

/// `DeleteCustomerRequest`, `BlockUsers`.
const CUSTOMER_IDS_REQUEST: &[&str] = &["user_ids"];

/// `DeleteOrganizationRequest`.
const DELETE_ORGANIZATION_REQUEST: &[&str] = &["organization_ids"];

/// edge-budget's own fields on keys (`expires` as RFC 3339 beside
/// LiteLLM's `duration`).
const OURS_KEY: &[&str] = &[
    "budget_limits",
    "reservation_floor",
    "expires",
    "budget_alert_thresholds",
];
/// edge-budget's own fields on users and teams.
const OURS_OWNER: &[&str] = &[
    "budget_limits",
    "reservation_floor",
    "budget_shards",
    "budget_alert_thresholds",
];
/// Naming a key by its token (the hash) instead of its plaintext.
const OURS_TOKEN: &[&str] = &["token"];

/// The body a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    KeyGenerate,
    KeyUpdate,
    KeyDelete,
    KeyBlock,
    New(EntityKind),
    Update(EntityKind),
    Delete(EntityKind),
    MemberAdd,
    MemberUpdate,
    MemberDelete,
    CustomerBlock,
    TagInfo,
}

/// The lists of fields a route takes, ours first (the nearest-field
/// suggestion prefers them on a tie). An update takes every field its
/// create takes.
fn lists(form: Form) -> &'static [&'static [&'static str]] {
    use EntityKind::{Customer, Key, Model, Organization, Tag, Team, TeamMember, User};
    match form {
        Form::KeyGenerate => &[
            OURS_KEY,
            GENERATE_REQUEST_BASE,
            KEY_REQUEST_BASE,
            GENERATE_KEY_REQUEST,
        ],
        Form::KeyUpdate => &[
            OURS_KEY,
            OURS_TOKEN,
            GENERATE_REQUEST_BASE,
            KEY_REQUEST_BASE,
            UPDATE_KEY_REQUEST,
            GENERATE_KEY_REQUEST,
        ],
        Form::KeyDelete => &[KEY_REQUEST],
        Form::KeyBlock => &[BLOCK_KEY_REQUEST, OURS_TOKEN],
        Form::New(User) => &[OURS_OWNER, GENERATE_REQUEST_BASE, NEW_USER_REQUEST],
        Form::Update(User) => &[
            OURS_OWNER,
            GENERATE_REQUEST_BASE,
            UPDATE_USER_REQUEST,
            NEW_USER_REQUEST,
        ],
        Form::Delete(User) => &[DELETE_USER_REQUEST],
        Form::New(Team) => &[OURS_OWNER, TEAM_BASE, NEW_TEAM_REQUEST],
        Form::Update(Team) => &[OURS_OWNER, UPDATE_TEAM_REQUEST, TEAM_BASE, NEW_TEAM_REQUEST],
        Form::Delete(Team) => &[DELETE_TEAM_REQUEST],
        Form::New(Organization) => &[OURS_OWNER, NEW_ORGANIZATION_REQUEST, BUDGET_TABLE],
        // An update takes the budget fields too: they are what is acted on.
        Form::Update(Organization) => &[
            OURS_OWNER,
            UPDATE_ORGANIZATION_REQUEST,
            NEW_ORGANIZATION_REQUEST,
            BUDGET_TABLE,
        ],
        Form::Delete(Organization) => &[DELETE_ORGANIZATION_REQUEST],
        Form::MemberAdd => &[OURS_MEMBER, TEAM_MEMBER_ADD_REQUEST],
        Form::MemberUpdate => &[
            OURS_MEMBER,
            TEAM_MEMBER_DELETE_REQUEST,
            TEAM_MEMBER_UPDATE_REQUEST,
        ],
        Form::MemberDelete => &[TEAM_MEMBER_DELETE_REQUEST],
        Form::New(Customer) | Form::Update(Customer) => {
            &[OURS_OWNER, NEW_CUSTOMER_REQUEST, BUDGET_TABLE]
        }
        Form::Delete(Customer) | Form::CustomerBlock => &[CUSTOMER_IDS_REQUEST],
        Form::New(Tag) | Form::Update(Tag) => &[OURS_OWNER, TAG_REQUEST, BUDGET_TABLE],
        Form::Delete(Tag) => &[TAG_DELETE_REQUEST],
        Form::TagInfo => &[TAG_INFO_REQUEST],
        Form::New(Key | TeamMember | Model) | Form::Update(Key | TeamMember | Model) => &[],
        Form::Delete(Key | TeamMember | Model) => &[],
    }
}

/// Whether `field` is one the route takes.
pub fn is_known(form: Form, field: &str) -> bool {
    lists(form).iter().any(|l| l.contains(&field))
}

/// Every field of `body` is one the route takes; otherwise a 400 naming
/// the first unknown one (`param`) and the nearest known field.
pub fn check(form: Form, body: &Map<String, Value>) -> Result<(), ApiError> {
    let Some(unknown) = body.keys().find(|f| !is_known(form, f)) else {
        return Ok(());
    };
    let shown: String = unknown.chars().take(64).collect();
    let message = match nearest(form, unknown) {
        Some(near) => format!("unknown field \"{shown}\": did you mean \"{near}\"?"),
        None => format!("unknown field \"{shown}\": this route takes no fields"),
    };
    Err(ApiError::bad_request(&shown, message))
}

/// The known field of the route nearest to `field` (edit distance, case
/// ignored; the first listed on a tie).
pub fn nearest(form: Form, field: &str) -> Option<&'static str> {
    let field = field.to_ascii_lowercase();
    let mut best: Option<(usize, &'static str)> = None;
    for name in lists(form).iter().flat_map(|l| l.iter().copied()) {
        let d = edit_distance(&field, name);
        if best.is_none_or(|(b, _)| d < b) {
            best = Some((d, name));
        }
    }
    best.map(|(_, name)| name)
}

/// Levenshtein distance over characters (field names are short; long
/// inputs are cut at 64 characters first).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().take(64).collect();
    let b: Vec<char> = b.chars().take(64).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("budget_limit", "budget_limits"), 1);
        assert_eq!(edit_distance("max_budgets", "max_budget"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn typos_of_money_fields_name_the_field_they_meant() {
        for (form, typo, meant) in [
            (Form::New(EntityKind::User), "budget_limit", "budget_limits"),
            (Form::New(EntityKind::Team), "max_budgets", "max_budget"),
            (Form::KeyGenerate, "Max_Budget", "max_budget"),
            (Form::KeyUpdate, "budget_limts", "budget_limits"),
            (
                Form::New(EntityKind::Team),
                "reservation_flor",
                "reservation_floor",
            ),
            (
                Form::Update(EntityKind::Team),
                "budget_durations",
                "budget_duration",
            ),
        ] {
            let e = check(form, &body(json!({typo: 10}))).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.param.as_deref(), Some(typo));
            assert_eq!(
                e.message,
                format!("unknown field \"{typo}\": did you mean \"{meant}\"?")
            );
        }
    }

    #[test]
    fn litellm_request_fields_are_known_where_litellm_takes_them() {
        for (form, field) in [
            (Form::KeyGenerate, "soft_budget"),
            (Form::KeyGenerate, "key_type"),
            (Form::KeyUpdate, "temp_budget_increase"),
            (Form::KeyUpdate, "soft_budget"),
            (Form::KeyUpdate, "token"),
            (Form::KeyBlock, "token"),
            (Form::New(EntityKind::User), "user_email"),
            (Form::New(EntityKind::User), "auto_create_key"),
            (Form::Update(EntityKind::User), "password"),
            (Form::New(EntityKind::Team), "members_with_roles"),
            (Form::Update(EntityKind::Team), "team_member_budget"),
            (Form::KeyDelete, "key_aliases"),
            (Form::Delete(EntityKind::User), "user_ids"),
            (Form::Delete(EntityKind::Team), "team_ids"),
        ] {
            assert!(is_known(form, field), "{form:?} {field}");
        }
        for (form, field) in [
            (Form::KeyDelete, "user_ids"),
            (Form::KeyBlock, "blocked"),
            (Form::New(EntityKind::Team), "user_email"),
            (Form::Delete(EntityKind::Team), "user_ids"),
            (Form::KeyGenerate, "key_name"),
        ] {
            assert!(!is_known(form, field), "{form:?} {field}");
        }
        assert!(check(Form::KeyGenerate, &body(json!({}))).is_ok());
    }
}
