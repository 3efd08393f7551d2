//! The orders service: HTTP handlers that run a command on an `Order` and save the
//! order's events and its master row (`OrderRow`) in one transaction.
//!
//! | request | what it does |
//! |---|---|
//! | `POST /orders` `{"customer"}` | places an order (201) |
//! | `POST /orders/{id}/lines` `{"sku", "quantity", "unit_price_cents"}` | adds a line |
//! | `POST /orders/{id}/pay` `{"amount_cents"}` | pays the order in full |
//! | `POST /orders/{id}/cancel` `{"reason"}` | cancels an unpaid order |
//! | `GET /orders/{id}` | the aggregate, loaded from its events |
//! | `GET /totals` | the projection: orders and totals per status |
//!
//! Every command takes an optional `expected_version`: the command then runs on the
//! order as it was at that version, and the save fails with 409 if the order has moved
//! on since (optimistic concurrency through the store's unique stream version). Without
//! it, a lost race is retried on the reloaded order. A refused command is 422, a
//! malformed request 400 (or axum's 415 / 422 for a wrong content type or a missing
//! field), an unknown order 404; every error is `{"error": KIND, "message": TEXT}`.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use eventfold::{retry_on_conflict, Application, MaybeConflict, Root};
use eventfold_cqrs::master::Master;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::order::{CommandError, Line, Order, OrderEvent, Status};
use crate::row::OrderRow;
use crate::totals::{OrderTotals, StatusTotal};

/// Times a command runs in all when it loses races (without `expected_version`).
const ATTEMPTS: u32 = 5;

/// Why a request failed; each is one HTTP status and one `error` kind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The order refused the command (422 `invalid_command`).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// No order has this id (404 `not_found`).
    #[error("no order {0}")]
    NotFound(Uuid),
    /// The order is not at the version the request expected, or another writer saved
    /// it first (409 `conflict`). Nothing was written.
    #[error("{0}")]
    Conflict(String),
    /// The request could not be read (400 `bad_request`, or the status axum gives a
    /// wrong content type or a body that misses a field).
    #[error("{message}")]
    BadRequest {
        /// The HTTP status.
        status: StatusCode,
        /// What is wrong with the request.
        message: String,
    },
    /// The store failed (503 `unavailable` when it is worth retrying, else 500
    /// `internal`).
    #[error(transparent)]
    Store(#[from] eventfold::Error),
    /// The master model could not be saved (500 `internal`).
    #[error(transparent)]
    Master(eventfold_cqrs::master::Error),
}

impl From<eventfold_cqrs::master::Error> for ServiceError {
    fn from(error: eventfold_cqrs::master::Error) -> Self {
        match error {
            eventfold_cqrs::master::Error::Store(e) => e.into(),
            other => ServiceError::Master(other),
        }
    }
}

impl From<JsonRejection> for ServiceError {
    fn from(rejection: JsonRejection) -> Self {
        ServiceError::BadRequest {
            status: rejection.status(),
            message: rejection.body_text(),
        }
    }
}

impl From<PathRejection> for ServiceError {
    fn from(rejection: PathRejection) -> Self {
        ServiceError::BadRequest {
            status: StatusCode::BAD_REQUEST,
            message: rejection.body_text(),
        }
    }
}

impl MaybeConflict for ServiceError {
    fn is_conflict(&self) -> bool {
        match self {
            ServiceError::Conflict(_) => true,
            ServiceError::Store(e) => e.is_conflict(),
            _ => false,
        }
    }
}

impl ServiceError {
    /// The HTTP status and the `error` kind.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ServiceError::Command(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_command"),
            ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            _ if self.is_conflict() => (StatusCode::CONFLICT, "conflict"),
            ServiceError::BadRequest { status, .. } => (*status, "bad_request"),
            ServiceError::Store(e) if e.is_transient() => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// `invalid_command`, `not_found`, `conflict`, `bad_request`, `unavailable`,
    /// `internal`.
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            error: kind.to_owned(),
            message: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

/// An order as the service returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderView {
    /// The order's id.
    pub id: Uuid,
    /// The aggregate's version (its number of events).
    pub version: u64,
    /// Who placed it.
    pub customer: String,
    /// Where it is in its life.
    pub status: Status,
    /// Its lines.
    pub lines: Vec<Line>,
    /// The sum of its lines, in cents.
    pub total_cents: i64,
    /// The master row's django-cqrs revision after this command (what replicas will
    /// hold); `None` on a read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cqrs_revision: Option<i64>,
}

impl OrderView {
    fn of(order: &Root<Order>, cqrs_revision: Option<i64>) -> Self {
        OrderView {
            id: *order.id(),
            version: order.version(),
            customer: order.customer.clone(),
            status: order.status,
            lines: order.lines.clone(),
            total_cents: order.total_cents(),
            cqrs_revision,
        }
    }
}

/// `POST /orders`.
#[derive(Debug, Deserialize)]
pub struct PlaceOrder {
    /// Who places it.
    pub customer: String,
}

/// `POST /orders/{id}/lines`.
#[derive(Debug, Deserialize)]
pub struct AddLine {
    /// The article.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// The price of one, in cents.
    pub unit_price_cents: i64,
    /// Run on the order at this version; 409 if it has moved on.
    pub expected_version: Option<u64>,
}

/// `POST /orders/{id}/pay`.
#[derive(Debug, Deserialize)]
pub struct Pay {
    /// What is paid, in cents: the order's total.
    pub amount_cents: i64,
    /// Run on the order at this version; 409 if it has moved on.
    pub expected_version: Option<u64>,
}

/// `POST /orders/{id}/cancel`.
#[derive(Debug, Deserialize)]
pub struct Cancel {
    /// Why (optional).
    #[serde(default)]
    pub reason: String,
    /// Run on the order at this version; 409 if it has moved on.
    pub expected_version: Option<u64>,
}

/// What the handlers share: the application (store, repository) and the django-cqrs
/// master.
#[derive(Clone)]
pub struct Orders {
    app: Arc<Application>,
    master: Master,
}

impl Orders {
    /// The service on `app`, whose store must hold the `orders` table
    /// ([`OrderRow::create_table`]).
    pub fn new(app: Arc<Application>, master: Master) -> Self {
        Orders { app, master }
    }

    /// The routes of the service.
    pub fn router(self) -> Router {
        Router::new()
            .route("/orders", post(place))
            .route("/orders/{id}", get(read))
            .route("/orders/{id}/lines", post(add_line))
            .route("/orders/{id}/pay", post(pay))
            .route("/orders/{id}/cancel", post(cancel))
            .route("/totals", get(totals))
            .with_state(self)
    }

    /// Places an order: its first event and its master row (revision 0), one
    /// transaction.
    pub async fn place(&self, customer: &str) -> Result<OrderView, ServiceError> {
        let mut order = Root::<Order>::new(Order::place(customer)?);
        let mut row = OrderRow::of(&order);
        let mut tx = self.app.begin().await?;
        self.app.save_in(&mut tx, &mut order).await?;
        let revision = row.insert(&self.master, &mut tx).await?;
        tx.commit().await?;
        Ok(OrderView::of(&order, Some(revision)))
    }

    /// Runs `decide` on the order `id` (at `expected_version` if given), then saves the
    /// event and the updated master row in one transaction.
    pub async fn command(
        &self,
        id: Uuid,
        expected_version: Option<u64>,
        decide: impl Fn(&Order) -> Result<OrderEvent, CommandError>,
    ) -> Result<OrderView, ServiceError> {
        match expected_version {
            // The caller decided on that version: a lost race is theirs to see.
            Some(_) => self.try_command(id, expected_version, &decide).await,
            None => retry_on_conflict(ATTEMPTS, || self.try_command(id, None, &decide)).await,
        }
    }

    async fn try_command(
        &self,
        id: Uuid,
        expected_version: Option<u64>,
        decide: &impl Fn(&Order) -> Result<OrderEvent, CommandError>,
    ) -> Result<OrderView, ServiceError> {
        let mut order = self.load(id, expected_version).await?;
        if let Some(expected) = expected_version {
            if order.version() != expected {
                return Err(ServiceError::Conflict(format!(
                    "order {id} is at version {}, not {expected}",
                    order.version()
                )));
            }
        }
        order.trigger(decide(&order)?);
        let mut row = OrderRow::of(&order);
        let mut tx = self.app.begin().await?;
        // The events first: a stale order fails here, before the row is touched.
        self.app.save_in(&mut tx, &mut order).await?;
        let revision = row.update(&self.master, &mut tx).await?;
        tx.commit().await?;
        Ok(OrderView::of(&order, Some(revision)))
    }

    async fn load(&self, id: Uuid, version: Option<u64>) -> Result<Root<Order>, ServiceError> {
        let repository = self.app.repository();
        let loaded = match version {
            Some(version) => repository.get_at::<Order>(&id, version).await,
            None => repository.get::<Order>(&id).await,
        };
        match loaded {
            Err(eventfold::Error::AggregateNotFound { .. }) => Err(ServiceError::NotFound(id)),
            other => Ok(other?),
        }
    }

    /// The projection's rows.
    pub async fn totals(&self) -> Result<Vec<StatusTotal>, ServiceError> {
        Ok(OrderTotals::read(&**self.app.store()).await?)
    }
}

async fn place(
    State(orders): State<Orders>,
    body: Result<Json<PlaceOrder>, JsonRejection>,
) -> Result<(StatusCode, Json<OrderView>), ServiceError> {
    let Json(body) = body?;
    Ok((
        StatusCode::CREATED,
        Json(orders.place(&body.customer).await?),
    ))
}

async fn read(
    State(orders): State<Orders>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<OrderView>, ServiceError> {
    let Path(id) = id?;
    Ok(Json(OrderView::of(&orders.load(id, None).await?, None)))
}

async fn add_line(
    State(orders): State<Orders>,
    id: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<AddLine>, JsonRejection>,
) -> Result<Json<OrderView>, ServiceError> {
    let (Path(id), Json(body)) = (id?, body?);
    let decide = |order: &Order| order.add_line(&body.sku, body.quantity, body.unit_price_cents);
    Ok(Json(
        orders.command(id, body.expected_version, decide).await?,
    ))
}

async fn pay(
    State(orders): State<Orders>,
    id: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<Pay>, JsonRejection>,
) -> Result<Json<OrderView>, ServiceError> {
    let (Path(id), Json(body)) = (id?, body?);
    let decide = |order: &Order| order.pay(body.amount_cents);
    Ok(Json(
        orders.command(id, body.expected_version, decide).await?,
    ))
}

async fn cancel(
    State(orders): State<Orders>,
    id: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<Cancel>, JsonRejection>,
) -> Result<Json<OrderView>, ServiceError> {
    let (Path(id), Json(body)) = (id?, body?);
    let decide = |order: &Order| order.cancel(&body.reason);
    Ok(Json(
        orders.command(id, body.expected_version, decide).await?,
    ))
}

async fn totals(State(orders): State<Orders>) -> Result<Json<Vec<StatusTotal>>, ServiceError> {
    Ok(Json(orders.totals().await?))
}
