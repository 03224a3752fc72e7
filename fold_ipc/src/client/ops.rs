//! One [`Client`] method per operation, with typed params and results.

use super::error::{Error, Result};
use super::Client;
use crate::operation::{
    DeleteSchemaResult, HistoryResult, Mutation, MutationResult, Operation, Pong, Record,
    SchemaList,
};
use crate::query::{Query, QueryResult};
use crate::schema::SchemaDef;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

impl Client {
    /// Checks the daemon is there; returns the protocol version it speaks.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn ping(&self) -> Result<Pong> {
        self.call(&Operation::Ping).await
    }

    /// The names of the schemas this app may see, sorted.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn list_schemas(&self) -> Result<Vec<String>> {
        let list: SchemaList = self.call(&Operation::ListSchemas).await?;
        Ok(list.schemas)
    }

    /// One schema's definition.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such schema; otherwise see [`Error`].
    pub async fn get_schema(&self, name: &str) -> Result<SchemaDef> {
        self.call(&Operation::GetSchema {
            name: name.to_string(),
        })
        .await
    }

    /// Defines a new schema; returns it as stored.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when it exists; [`Error::Invalid`] naming a bad name or field.
    pub async fn create_schema(&self, schema: SchemaDef) -> Result<SchemaDef> {
        self.call(&Operation::CreateSchema(schema)).await
    }

    /// Drops a schema; with `force`, also its records. Returns how many records went.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when the schema holds records and `force` is false.
    pub async fn delete_schema(&self, name: &str, force: bool) -> Result<u64> {
        let op = Operation::DeleteSchema {
            name: name.to_string(),
            force,
        };
        let deleted: DeleteSchemaResult = self.call(&op).await?;
        Ok(deleted.records)
    }

    /// One page of records matching `query`.
    ///
    /// ```no_run
    /// # async fn run(client: fold_ipc::client::Client) -> fold_ipc::client::Result<()> {
    /// use fold_ipc::query::{and, eq, gt, Query};
    /// let query = Query::new("post")
    ///     .fields(["title", "likes"])
    ///     .filter(and([eq("author", "alice"), gt("likes", 10)]))
    ///     .order_by_desc("likes")
    ///     .limit(20);
    /// let page = client.query(query).await?;
    /// for row in &page.rows {
    ///     println!("{} {}", row["id"], row["title"]);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Forbidden`] without a `query` grant on the schema; [`Error::Invalid`] naming a
    /// bad parameter; otherwise see [`Error`].
    pub async fn query(&self, query: Query) -> Result<QueryResult> {
        self.call(&Operation::Query(query)).await
    }

    /// One page of records matching `query`, each deserialised into a `T`.
    ///
    /// ```no_run
    /// # async fn run(client: fold_ipc::client::Client) -> fold_ipc::client::Result<()> {
    /// use fold_ipc::query::{eq, Query};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Post {
    ///     id: String,
    ///     title: String,
    /// }
    ///
    /// let posts: Vec<Post> = client
    ///     .query_as(Query::new("post").filter(eq("author", "alice")))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Client::query`], plus [`Error::Decode`] naming the first row that does not fit `T`.
    pub async fn query_as<T: DeserializeOwned>(&self, query: Query) -> Result<Vec<T>> {
        rows_as(self.query(query).await?)
    }

    /// Creates a record of `schema` from `data`, which must serialise to a JSON object.
    /// Returns the new record's id and version.
    ///
    /// ```no_run
    /// # async fn run(client: fold_ipc::client::Client) -> fold_ipc::client::Result<()> {
    /// let created = client
    ///     .create("post", serde_json::json!({"title": "hi", "body": "..."}))
    ///     .await?;
    /// println!("new post {}", created.id);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `data` is not an object or does not fit the schema;
    /// [`Error::Forbidden`] without a `mutation` grant; otherwise see [`Error`].
    pub async fn create<D: Serialize>(&self, schema: &str, data: D) -> Result<MutationResult> {
        let mutation = Mutation::Create {
            schema: schema.to_string(),
            data: record(&data)?,
        };
        self.call(&Operation::Mutation(mutation)).await
    }

    /// Sets the fields in `patch` (a JSON object) on record `id`; other fields keep their
    /// values, and a field set to `null` is cleared. Returns the record's new version.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such record; otherwise as [`Client::create`].
    pub async fn update<D: Serialize>(
        &self,
        schema: &str,
        id: &str,
        patch: D,
    ) -> Result<MutationResult> {
        let mutation = Mutation::Update {
            schema: schema.to_string(),
            id: id.to_string(),
            data: record(&patch)?,
        };
        self.call(&Operation::Mutation(mutation)).await
    }

    /// Deletes record `id` (its history is kept).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such record; otherwise see [`Error`].
    pub async fn delete(&self, schema: &str, id: &str) -> Result<MutationResult> {
        let mutation = Mutation::Delete {
            schema: schema.to_string(),
            id: id.to_string(),
        };
        self.call(&Operation::Mutation(mutation)).await
    }

    /// Every version of record `id`, oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such record; otherwise see [`Error`].
    pub async fn history(&self, schema: &str, id: &str) -> Result<HistoryResult> {
        self.call(&Operation::History {
            schema: schema.to_string(),
            id: id.to_string(),
        })
        .await
    }

    /// Sends a typed operation and deserialises its result.
    pub(crate) async fn call<T: DeserializeOwned>(&self, op: &Operation) -> Result<T> {
        let params = op
            .params_json()
            .map(RawValue::from_string)
            .transpose()
            .map_err(|e| Error::protocol(format!("{} params did not encode: {e}", op.name())))?;
        let raw = self.call_raw(op.name(), params).await?;
        serde_json::from_str(raw.get()).map_err(|e| {
            Error::protocol(format!(
                "the daemon's {} result has an unexpected shape: {e}",
                op.name()
            ))
        })
    }
}

/// `data` as a record: it must serialise to a JSON object.
pub(crate) fn record<D: Serialize + ?Sized>(data: &D) -> Result<Record> {
    let invalid = |message: String| Error::Invalid {
        field: Some("params.data".into()),
        message,
    };
    match serde_json::to_value(data) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(invalid(format!(
            "params.data: must be a JSON object, not {}",
            kind(&other)
        ))),
        Err(e) => Err(invalid(format!("params.data: cannot be serialised: {e}"))),
    }
}

/// Each row of `page` as a `T`.
pub(crate) fn rows_as<T: DeserializeOwned>(page: QueryResult) -> Result<Vec<T>> {
    page.rows
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            serde_json::from_value(Value::Object(row)).map_err(|e| Error::Decode {
                message: format!("row {i}: {e}"),
            })
        })
        .collect()
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_must_be_an_object() {
        assert!(record(&serde_json::json!({"a": 1})).is_ok());
        for bad in [serde_json::json!([1]), serde_json::json!("x"), Value::Null] {
            let err = record(&bad).unwrap_err();
            assert!(
                matches!(&err, Error::Invalid { field: Some(f), .. } if f == "params.data"),
                "{err:?}"
            );
        }
    }

    #[test]
    fn rows_decode_into_types_and_name_the_bad_row() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Post {
            id: String,
            n: i64,
        }
        let page: QueryResult = serde_json::from_value(serde_json::json!({
            "rows": [{"id": "a", "n": 1}, {"id": "b", "n": 2}]
        }))
        .unwrap();
        let posts: Vec<Post> = rows_as(page).unwrap();
        assert_eq!(
            posts[1],
            Post {
                id: "b".into(),
                n: 2
            }
        );

        let page: QueryResult = serde_json::from_value(serde_json::json!({
            "rows": [{"id": "a", "n": 1}, {"id": "b"}]
        }))
        .unwrap();
        let err = rows_as::<Post>(page).unwrap_err();
        assert!(
            matches!(&err, Error::Decode { message } if message.starts_with("row 1")),
            "{err:?}"
        );
    }
}
