//! Typed states: the lifecycles of accounts, pools, nodes and operations, and the
//! kinds of pools and operations, as the store and the API spell them. Each is a
//! closed enum: the store reads and writes it as text (the schema's CHECKs admit
//! the same words), the API shows it as an enum in the OpenAPI document, and the
//! worker and the reconciler match it exhaustively.

/// A stored text that names no variant of the enum it is read as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not a {what}")]
pub struct UnknownState {
    pub what: &'static str,
    pub value: String,
}

/// Declares an enum stored and shown as text: serde and OpenAPI by its words,
/// `as_str`/`FromStr`/`Display`, and sqlx encoding as text on both backends.
macro_rules! text_enum {
    ($(#[$meta:meta])* pub enum $name:ident ($what:literal) { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        // Words are the variants' names in snake case (serde and the OpenAPI
        // schema spell them so; a test checks they match `as_str`).
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::states::UnknownState;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err($crate::states::UnknownState { what: $what, value: other.to_owned() }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<DB: sqlx::Database> sqlx::Type<DB> for $name
        where
            String: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <String as sqlx::Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <String as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for $name
        where
            &'static str: sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as sqlx::Database>::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&'static str as sqlx::Encode<'q, DB>>::encode(self.as_str(), buf)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $name
        where
            &'r str: sqlx::Decode<'r, DB>,
        {
            fn decode(value: <DB as sqlx::Database>::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&'r str as sqlx::Decode<'r, DB>>::decode(value)?;
                Ok(text.parse::<Self>()?)
            }
        }
    };
}
pub(crate) use text_enum;

text_enum! {
    /// Where an account is in its life.
    pub enum AccountState ("account state") {
        /// Created; its first operation has not finished.
        Provisioning = "provisioning",
        Active = "active",
        /// Not serving (410); its pool is kept until `retain_until`.
        Deactivated = "deactivated",
        Deleted = "deleted",
    }
}

impl AccountState {
    /// Whether its nodes serve it (an account being provisioned is served as soon
    /// as a node has it, so the locator works within a second).
    pub fn serves(self) -> bool {
        match self {
            AccountState::Provisioning | AccountState::Active => true,
            AccountState::Deactivated | AccountState::Deleted => false,
        }
    }
}

text_enum! {
    /// What a `jit` account's packaged answers are encrypted with.
    pub enum EncryptionScheme ("encryption scheme") {
        None = "none",
        /// HLS AES-128: each media segment encrypted whole (AES-128-CBC).
        Aes128 = "aes128",
    }
}

text_enum! {
    /// How a `jit` account's DASH segments are encrypted when it encrypts.
    pub enum DashScheme ("DASH encryption scheme") {
        /// Common Encryption with AES-128-CTR.
        Cenc = "cenc",
        /// Common Encryption with AES-128-CBC, a 1:9 pattern over video.
        Cbcs = "cbcs",
    }
}

text_enum! {
    /// Shared pools serve many trial/payg accounts; a dedicated pool one SLA account
    /// (or none yet: a warm pool).
    pub enum PoolKind ("pool kind") {
        Shared = "shared",
        Dedicated = "dedicated",
    }
}

text_enum! {
    /// Where a pool is in its life.
    pub enum PoolState ("pool state") {
        /// Made; not yet serving with the nodes it owes.
        Creating = "creating",
        Ready = "ready",
        /// A deactivated account's dedicated pool, kept small for a reactivation.
        Retained = "retained",
        /// Released: its nodes stop (after a grace for routers), then it is deleted.
        Deleting = "deleting",
        Deleted = "deleted",
    }
}

impl PoolState {
    /// Whether the pool is wanted: it keeps its nodes and may take accounts.
    pub fn live(self) -> bool {
        match self {
            PoolState::Creating | PoolState::Ready | PoolState::Retained => true,
            PoolState::Deleting | PoolState::Deleted => false,
        }
    }
}

text_enum! {
    /// A pool's health, beside its lifecycle: degraded while nodes fail to start
    /// and launches back off.
    pub enum PoolHealth ("pool health") {
        Healthy = "healthy",
        Degraded = "degraded",
    }
}

text_enum! {
    /// Where a node is in its life, as admin holds it.
    pub enum NodeState ("node state") {
        /// Launched or registered; not yet serving (no heartbeat with a passing self-probe).
        Starting = "starting",
        Ready = "ready",
        /// Finishing in-flight responses before it exits.
        Draining = "draining",
        /// Given up on by admin (silent, probes failing, exited); it is stopped.
        Failed = "failed",
        Stopped = "stopped",
    }
}

impl NodeState {
    /// Whether the node counts toward its pool's size (it serves or will).
    pub fn live(self) -> bool {
        match self {
            NodeState::Starting | NodeState::Ready => true,
            NodeState::Draining | NodeState::Failed | NodeState::Stopped => false,
        }
    }

    /// The state a heartbeat leaves a node in: admin's verdicts (failed, stopped,
    /// draining) stick; otherwise what the node says.
    pub fn after_heartbeat(self, reported: headwater_protocol::NodeState) -> NodeState {
        match self {
            NodeState::Failed | NodeState::Stopped | NodeState::Draining => self,
            NodeState::Starting | NodeState::Ready => NodeState::from(reported),
        }
    }
}

impl From<headwater_protocol::NodeState> for NodeState {
    fn from(s: headwater_protocol::NodeState) -> Self {
        match s {
            headwater_protocol::NodeState::Starting => NodeState::Starting,
            headwater_protocol::NodeState::Ready => NodeState::Ready,
            headwater_protocol::NodeState::Draining => NodeState::Draining,
        }
    }
}

text_enum! {
    /// What an operation does.
    pub enum OperationKind ("operation kind") {
        Create = "create",
        /// A new offer (an SLA change included): the account may move pools.
        ChangeOffer = "change_offer",
        /// Only the IP allow-list or CORS origins change.
        Update = "update",
        /// A new image of an origin type rolled over its pools.
        Upgrade = "upgrade",
        Deactivate = "deactivate",
        Reactivate = "reactivate",
        Delete = "delete",
    }
}

text_enum! {
    /// Where an operation is.
    pub enum OperationState ("operation state") {
        Pending = "pending",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        /// An upgrade a newer upload of the same origin type replaced.
        Superseded = "superseded",
    }
}

impl OperationState {
    /// Whether the operation still has work to do.
    pub fn open(self) -> bool {
        match self {
            OperationState::Pending | OperationState::Running => true,
            OperationState::Succeeded | OperationState::Failed | OperationState::Superseded => false,
        }
    }
}

text_enum! {
    /// What runs a target's nodes.
    pub enum TargetKind ("target kind") {
        /// Processes on admin's own host.
        Process = "process",
        /// Pods in a Kubernetes namespace.
        Kubernetes = "kubernetes",
    }
}

text_enum! {
    /// Whether a target takes new nodes.
    pub enum TargetState ("target state") {
        /// New nodes are placed here within its quotas.
        Active = "active",
        /// Set by the operator: no new nodes; its nodes are replaced elsewhere,
        /// make-before-break.
        Draining = "draining",
        /// Set by admin when many of its nodes went silent at once: no new nodes,
        /// and replacements there are rate-limited.
        Unreachable = "unreachable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store's words, serde's and the OpenAPI document's are one.
    fn spelled_alike<T>(all: &[T])
    where
        T: Copy
            + PartialEq
            + std::fmt::Debug
            + serde::Serialize
            + std::str::FromStr
            + std::fmt::Display
            + utoipa::ToSchema,
        <T as std::str::FromStr>::Err: std::fmt::Debug,
    {
        let schema = serde_json::to_value(T::schema()).unwrap();
        let words: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(schema["enum"], serde_json::json!(words), "{schema}");
        for v in all {
            assert_eq!(serde_json::to_value(v).unwrap(), v.to_string());
            assert_eq!(v.to_string().parse::<T>().ok(), Some(*v));
        }
    }

    #[test]
    fn every_word_reads_back_as_its_variant() {
        spelled_alike(AccountState::ALL);
        spelled_alike(PoolKind::ALL);
        spelled_alike(PoolState::ALL);
        spelled_alike(PoolHealth::ALL);
        spelled_alike(NodeState::ALL);
        spelled_alike(OperationKind::ALL);
        spelled_alike(OperationState::ALL);
        spelled_alike(crate::domain::OfferKind::ALL);
        spelled_alike(TargetKind::ALL);
        spelled_alike(TargetState::ALL);
        spelled_alike(EncryptionScheme::ALL);
        spelled_alike(DashScheme::ALL);
        assert_eq!("scale".parse::<OperationKind>().unwrap_err().what, "operation kind");
        // A word outside the enum read from the store is an error, never a default.
        assert!("gold".parse::<crate::domain::OfferKind>().is_err());
        assert_eq!(serde_json::from_str::<NodeState>("\"draining\"").unwrap(), NodeState::Draining);
    }

    #[test]
    fn admin_verdicts_stick_over_heartbeats() {
        use headwater_protocol::NodeState as Reported;
        assert_eq!(NodeState::Starting.after_heartbeat(Reported::Ready), NodeState::Ready);
        assert_eq!(NodeState::Ready.after_heartbeat(Reported::Draining), NodeState::Draining);
        for verdict in [NodeState::Failed, NodeState::Stopped, NodeState::Draining] {
            assert_eq!(verdict.after_heartbeat(Reported::Ready), verdict);
        }
    }
}
