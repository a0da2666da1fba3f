"""The JSON documents the simulator answers with, in the shapes ccxt parses.

Field choices that ccxt depends on (``docs/ccxt-loopback.md``, "Fields ccxt reads"):

* positionRisk: ccxt drops entries whose ``entryPrice`` is not positive and takes the side from
  the sign of ``notional``, so flat symbols are left out (v3) or carry ``entryPrice "0"`` (v2),
  and a short's ``notional`` is negative.
* futures account: ccxt skips assets with ``updateTime == 0``, so it is always set.
* order: ``positionSide``/``cumQuote`` mark an order as a contract order for ccxt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from ess.sim.book import ZERO, Account, Order, Position
from ess.sim.markets import Market, Venue, fmt

__all__ = [
    "algo_order",
    "futures_account",
    "futures_order",
    "leverage_brackets",
    "position_risk",
    "spot_account",
    "spot_order",
]

#: One flat maintenance bracket per symbol; enough for ccxt's margin arithmetic.
_BRACKET = {
    "bracket": 1,
    "initialLeverage": 20,
    "notionalCap": 1_000_000_000,
    "notionalFloor": 0,
    "maintMarginRatio": 0.004,
    "cum": 0,
}


def futures_order(order: Order) -> dict[str, Any]:
    """``/fapi/v1/order`` shape (placement result, query, cancel, open-orders element)."""
    return {
        "orderId": order.order_id,
        "symbol": order.symbol,
        "status": order.public_status,
        "clientOrderId": order.client_order_id,
        "price": fmt(order.price),
        "avgPrice": fmt(order.avg_price),
        "origQty": fmt(order.orig_qty),
        "executedQty": fmt(order.executed_qty),
        "cumQty": fmt(order.executed_qty),
        "cumQuote": fmt(order.cum_quote),
        "timeInForce": order.time_in_force,
        "type": order.type,
        "reduceOnly": order.reduce_only,
        "closePosition": order.close_position,
        "side": order.side,
        "positionSide": "BOTH",
        "stopPrice": fmt(order.trigger_price),
        "workingType": "CONTRACT_PRICE",
        "priceProtect": False,
        "origType": order.type,
        "priceMatch": "NONE",
        "selfTradePreventionMode": "EXPIRE_MAKER",
        "goodTillDate": 0,
        "time": order.time_ms,
        "updateTime": order.update_ms,
    }


def algo_order(order: Order) -> dict[str, Any]:
    """``/fapi/v1/algoOrder`` shape: Binance's conditional-order book since the algo migration."""
    return {
        "algoId": order.order_id,
        "clientAlgoId": order.client_order_id,
        "algoType": "CONDITIONAL",
        "orderType": order.type,
        "symbol": order.symbol,
        "side": order.side,
        "positionSide": "BOTH",
        "timeInForce": order.time_in_force,
        "quantity": fmt(order.orig_qty),
        "algoStatus": order.public_status,
        "triggerPrice": fmt(order.trigger_price),
        "price": fmt(order.price),
        "icebergQuantity": None,
        "selfTradePreventionMode": "EXPIRE_MAKER",
        "workingType": "CONTRACT_PRICE",
        "priceMatch": "NONE",
        "closePosition": order.close_position,
        "priceProtect": False,
        "reduceOnly": order.reduce_only,
        "createTime": order.time_ms,
        "updateTime": order.update_ms,
        "triggerTime": 0,
        "goodTillDate": 0,
    }


def spot_order(order: Order, *, fills: Iterable[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """``/api/v3/order`` shape; with ``fills`` it is the ``newOrderRespType=FULL`` answer."""
    body: dict[str, Any] = {
        "symbol": order.symbol,
        "orderId": order.order_id,
        "orderListId": -1,
        "clientOrderId": order.client_order_id,
        "price": fmt(order.price),
        "origQty": fmt(order.orig_qty),
        "executedQty": fmt(order.executed_qty),
        "cummulativeQuoteQty": fmt(order.cum_quote),
        "status": order.public_status,
        "timeInForce": order.time_in_force,
        "type": order.type,
        "side": order.side,
        "stopPrice": "0",
        "icebergQty": "0",
        "time": order.time_ms,
        "updateTime": order.update_ms,
        "workingTime": order.time_ms,
        "isWorking": order.is_open,
        "origQuoteOrderQty": "0",
        "selfTradePreventionMode": "EXPIRE_MAKER",
    }
    if fills is not None:
        body["transactTime"] = order.update_ms
        body["fills"] = list(fills)
    return body


def _unrealized(position: Position, mark: Decimal) -> Decimal:
    return (mark - position.entry_price) * position.qty


def position_risk(
    position: Position,
    market: Market,
    mark: Decimal,
    leverage: int,
    *,
    v2: bool = False,
    hedge_mode: bool = False,
) -> dict[str, Any]:
    """One ``positionRisk`` element (v3 by default; ``v2`` adds ``leverage``/``marginType``).
    In ``hedge_mode`` the side is ``LONG`` or ``SHORT`` instead of ``BOTH``."""
    notional = position.qty * mark
    initial = abs(notional) / leverage
    side = ("LONG" if position.qty >= 0 else "SHORT") if hedge_mode else "BOTH"
    body: dict[str, Any] = {
        "symbol": position.symbol,
        "positionSide": side,
        "positionAmt": fmt(position.qty),
        "entryPrice": fmt(position.entry_price),
        "breakEvenPrice": fmt(position.entry_price),
        "markPrice": fmt(mark),
        "unRealizedProfit": fmt(_unrealized(position, mark)),
        "liquidationPrice": "0",
        "isolatedMargin": "0",
        "notional": fmt(notional),
        "marginAsset": market.quote,
        "isolatedWallet": "0",
        "initialMargin": fmt(initial),
        "maintMargin": fmt(abs(notional) * Decimal("0.004")),
        "positionInitialMargin": fmt(initial),
        "openOrderInitialMargin": "0",
        "adl": 0,
        "bidNotional": "0",
        "askNotional": "0",
        "updateTime": position.update_ms,
    }
    if v2:
        body |= {
            "leverage": str(leverage),
            "marginType": "cross",
            "maxNotionalValue": "1000000000",
            "isAutoAddMargin": "false",
        }
    return body


def futures_account(
    account: Account, marks: Mapping[tuple[Venue, str], Decimal], now_ms: int
) -> dict[str, Any]:
    """``GET /fapi/v3/account`` (and v2): one USDT asset plus the open positions."""
    unrealized = ZERO
    initial = ZERO
    positions = []
    for symbol, position in sorted(account.positions.items()):
        mark = marks[(Venue.FUTURES, symbol)]
        unrealized += _unrealized(position, mark)
        initial += abs(position.qty * mark) / account.leverage
        positions.append(
            {
                "symbol": symbol,
                "positionSide": "BOTH",
                "positionAmt": fmt(position.qty),
                "unrealizedProfit": fmt(_unrealized(position, mark)),
                "isolatedMargin": "0",
                "notional": fmt(position.qty * mark),
                "isolatedWallet": "0",
                "initialMargin": fmt(abs(position.qty * mark) / account.leverage),
                "maintMargin": fmt(abs(position.qty * mark) * Decimal("0.004")),
                "updateTime": position.update_ms or now_ms,
            }
        )
    wallet = account.futures_wallet
    margin_balance = wallet + unrealized
    asset = {
        "asset": "USDT",
        "walletBalance": fmt(wallet),
        "unrealizedProfit": fmt(unrealized),
        "marginBalance": fmt(margin_balance),
        "maintMargin": "0",
        "initialMargin": fmt(initial),
        "positionInitialMargin": fmt(initial),
        "openOrderInitialMargin": "0",
        "crossWalletBalance": fmt(wallet),
        "crossUnPnl": fmt(unrealized),
        "availableBalance": fmt(margin_balance - initial),
        "maxWithdrawAmount": fmt(margin_balance - initial),
        "updateTime": now_ms,
    }
    return {
        "totalInitialMargin": fmt(initial),
        "totalMaintMargin": "0",
        "totalWalletBalance": fmt(wallet),
        "totalUnrealizedProfit": fmt(unrealized),
        "totalMarginBalance": fmt(margin_balance),
        "totalCrossWalletBalance": fmt(wallet),
        "availableBalance": fmt(margin_balance - initial),
        "maxWithdrawAmount": fmt(margin_balance - initial),
        "assets": [asset],
        "positions": positions,
    }


def spot_account(account: Account, now_ms: int) -> dict[str, Any]:
    """``GET /api/v3/account``: free and locked per asset (zero balances included)."""
    assets = sorted(set(account.spot_free) | set(account.spot_locked))
    return {
        "makerCommission": 0,
        "takerCommission": 0,
        "buyerCommission": 0,
        "sellerCommission": 0,
        "canTrade": True,
        "canWithdraw": True,
        "canDeposit": True,
        "updateTime": now_ms,
        "accountType": "SPOT",
        "balances": [
            {
                "asset": asset,
                "free": fmt(account.spot_free.get(asset, ZERO)),
                "locked": fmt(account.spot_locked.get(asset, ZERO)),
            }
            for asset in assets
        ],
        "permissions": ["SPOT"],
        "uid": 0,
    }


def leverage_brackets(symbols: Iterable[str]) -> list[dict[str, Any]]:
    """``GET /fapi/v1/leverageBracket``: one bracket per symbol (ccxt caches it per instance)."""
    return [{"symbol": symbol, "notionalCoef": 1.0, "brackets": [_BRACKET]} for symbol in symbols]
