//! Long JSON values are TOASTed with lz4 by default, with the server's own
//! compression when told so; either way the studio reads the same values.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_values_go_in_with_lz4_unless_told_to_keep_the_servers_compression() {
    let messages: Vec<String> = (0..400)
        .map(|i| format!("message {i} of a long LangGraph conversation"))
        .collect();
    let input = json!({ "messages": messages });
    let data = json!({ "name": "node", "input": input }).to_string();
    for setting in ["lz4", "server"] {
        let env = TestEnv::new(&format!("toast_{setting}")).await;
        let mut redis = env.redis();
        env.publish_each(
            &mut redis,
            vec![observation_start("trace-1", "obs-1", &now_ts(), &data)],
        );
        let service = env.spawn("replica-a", &[("OBSERVABILITY_TOAST_COMPRESSION", setting)]);
        let db = env.db().await;
        let stored = wait_for_count(&db, "SELECT count(*) FROM public.observations", 1, WAIT).await;
        assert!(stored, "{setting}: not stored; log: {}", service.log());

        let row = db
            .query_one(
                "SELECT pg_column_compression(input), input::text,
                        current_setting('default_toast_compression')
                 FROM public.observations WHERE id = 'obs-1'",
                &[],
            )
            .await
            .unwrap();
        let server_default: String = row.get(2);
        let expected = if setting == "lz4" {
            "lz4"
        } else {
            server_default.as_str()
        };
        assert_eq!(
            row.get::<_, Option<String>>(0).as_deref(),
            Some(expected),
            "{setting}: the compression of the stored input"
        );
        let stored_input: serde_json::Value = serde_json::from_str(row.get(1)).unwrap();
        assert_eq!(stored_input, input, "{setting}: the input reads back whole");
    }
}
