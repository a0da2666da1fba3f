"""The JSON documents the simulator answers with, in the shapes ccxt parses.

Field choices that ccxt depends on (``docs/ccxt-loopback.md``, "Fields ccxt reads"):

* positionRisk: ccxt drops entries whose ``entryPrice`` is not positive and takes the side from
  the sign of ``notional``, so flat symbols are left out (v3) or carry ``entryPrice "0"`` (v2),
  and a short's ``notional`` is negative.
* futures account: ccxt skips assets with ``updateTime == 0``, so it is always set.
* order: ``positionSide``/``cumQuote`` mark an order as a contract order for ccxt.
* hedge mode: a position row's ``positionSide`` is ``LONG``/``SHORT`` (ccxt's ``hedged``),
  with a signed ``positionAmt`` and notional (a ``SHORT`` one negative, ccxt's ``short``);
  orders echo the ``positionSide`` they were placed with.
* COIN-M (``/dapi``): quantities are contracts; an order's filled value is ``cumBase`` (in the
  base coin, ccxt's ``cost`` for an inverse market), positionRisk's side comes from the sign of
  ``notionalValue`` (in the base coin), and balances and PnL are per margin coin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from ess.sim.book import ZERO, Account, Order, Position
from ess.sim.markets import Market, Venue, fmt

__all__ = [
    "algo_order",
    "capital_coin",
    "coinm_account",
    "coinm_leverage_brackets",
    "coinm_order",
    "coinm_position_risk",
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
        "positionSide": order.position_side,
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
        "positionSide": order.position_side,
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
) -> dict[str, Any]:
    """One ``positionRisk`` element (v3 by default; ``v2`` adds ``leverage``/``marginType``);
    ``positionSide`` is the position's (``BOTH``, or ``LONG``/``SHORT`` in hedge mode)."""
    notional = position.qty * mark
    initial = abs(notional) / leverage
    body: dict[str, Any] = {
        "symbol": position.symbol,
        "positionSide": position.side,
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
    for position in account.all_positions():
        symbol = position.symbol
        if (Venue.FUTURES, symbol) not in marks:
            continue  # a COIN-M position: /dapi reports it
        mark = marks[(Venue.FUTURES, symbol)]
        unrealized += _unrealized(position, mark)
        initial += abs(position.qty * mark) / account.leverage
        positions.append(
            {
                "symbol": symbol,
                "positionSide": position.side,
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


# -- COIN-M (/dapi) ------------------------------------------------------------------------------

#: Base-coin amounts are shown with Binance's 8 decimals.
_COIN = Decimal("1e-8")
#: The maintenance margin rate of the single bracket.
_MAINT = Decimal("0.004")
#: One flat COIN-M bracket per symbol (quantities in the base coin, as ``/dapi/v2`` has it).
_COINM_BRACKET = {
    "bracket": 1,
    "initialLeverage": 125,
    "qtyCap": 1_000_000,
    "qtyFloor": 0,
    "maintMarginRatio": 0.004,
    "cum": 0.0,
}


def _coin(value: Decimal) -> str:
    return fmt(value.quantize(_COIN))


def _coin_value(qty: Decimal, market: Market, price: Decimal) -> Decimal:
    """What ``qty`` contracts are worth in the base coin at ``price`` (signed like ``qty``)."""
    return qty * market.contract_size / price if price else ZERO


def _inverse_unrealized(position: Position, market: Market, mark: Decimal) -> Decimal:
    if not position.qty or not position.entry_price or not mark:
        return ZERO
    usd = position.qty * market.contract_size
    return usd * (1 / position.entry_price - 1 / mark)


def coinm_order(order: Order, market: Market) -> dict[str, Any]:
    """``/dapi/v1/order`` shape (placement result, query, cancel, open-orders element): like
    USD-M's but with ``pair`` and ``cumBase`` (the filled value in the base coin) instead of
    ``cumQuote``, and a harmonic ``avgPrice``."""
    average = order.executed_qty * market.contract_size / order.cum_base if order.cum_base else ZERO
    document = futures_order(order)
    for usd_m_only in ("cumQuote", "goodTillDate"):
        del document[usd_m_only]
    document.update(
        pair=order.symbol.split("_")[0],
        avgPrice=fmt(average),
        cumBase=_coin(order.cum_base),
        selfTradePreventionMode="NONE",
    )
    return document


def coinm_position_risk(
    position: Position, market: Market, mark: Decimal, leverage: int
) -> dict[str, Any]:
    """One ``GET /dapi/v1/positionRisk`` element: ``positionAmt`` in contracts,
    ``notionalValue`` and ``unRealizedProfit`` in the base coin (a short's notional negative);
    a flat symbol has ``entryPrice`` ``"0"`` (ccxt drops it); ``positionSide`` is the
    position's (``LONG``/``SHORT`` in hedge mode)."""
    return {
        "symbol": position.symbol,
        "positionAmt": fmt(position.qty),
        "entryPrice": fmt(position.entry_price),
        "breakEvenPrice": fmt(position.entry_price),
        "markPrice": fmt(mark),
        "unRealizedProfit": _coin(_inverse_unrealized(position, market, mark)),
        "liquidationPrice": "0",
        "leverage": str(leverage),
        "maxQty": "1000000",
        "marginType": "cross",
        "isolatedMargin": "0",
        "isAutoAddMargin": "false",
        "positionSide": position.side,
        "notionalValue": _coin(_coin_value(position.qty, market, mark)),
        "isolatedWallet": "0",
        "updateTime": position.update_ms,
    }


def coinm_account(
    account: Account,
    markets: Mapping[str, Market],
    marks: Mapping[tuple[Venue, str], Decimal],
    now_ms: int,
) -> dict[str, Any]:
    """``GET /dapi/v1/account``: one asset per margin coin (every coin a listed COIN-M market is
    margined in, and any the wallet holds) and the open COIN-M positions."""
    unrealized: dict[str, Decimal] = {}
    initial: dict[str, Decimal] = {}
    positions = []
    for position in account.all_positions():
        symbol = position.symbol
        market = markets.get(symbol)
        if market is None:
            continue  # a USD-M position: /fapi reports it
        mark = marks[(Venue.COINM, symbol)]
        pnl = _inverse_unrealized(position, market, mark)
        margin = abs(_coin_value(position.qty, market, mark)) / account.leverage
        asset = market.margin_asset
        unrealized[asset] = unrealized.get(asset, ZERO) + pnl
        initial[asset] = initial.get(asset, ZERO) + margin
        positions.append(
            {
                "symbol": symbol,
                "positionAmt": fmt(position.qty),
                "initialMargin": _coin(margin),
                "maintMargin": _coin(abs(_coin_value(position.qty, market, mark)) * _MAINT),
                "unrealizedProfit": _coin(pnl),
                "positionInitialMargin": _coin(margin),
                "openOrderInitialMargin": "0",
                "leverage": str(account.leverage),
                "isolated": False,
                "positionSide": position.side,
                "entryPrice": fmt(position.entry_price),
                "maxQty": "1000000",
                "updateTime": position.update_ms or now_ms,
            }
        )
    coins = sorted({m.margin_asset for m in markets.values()} | set(account.coinm_wallet))
    assets = []
    for coin in coins:
        wallet = account.coinm_wallet.get(coin, ZERO)
        pnl = unrealized.get(coin, ZERO)
        used = initial.get(coin, ZERO)
        available = wallet + pnl - used
        assets.append(
            {
                "asset": coin,
                "walletBalance": _coin(wallet),
                "unrealizedProfit": _coin(pnl),
                "marginBalance": _coin(wallet + pnl),
                "maintMargin": "0",
                "initialMargin": _coin(used),
                "positionInitialMargin": _coin(used),
                "openOrderInitialMargin": "0",
                "maxWithdrawAmount": _coin(max(available, ZERO)),
                "crossWalletBalance": _coin(wallet),
                "crossUnPnl": _coin(pnl),
                "availableBalance": _coin(available),
                "updateTime": now_ms,
            }
        )
    return {
        "assets": assets,
        "positions": positions,
        "canDeposit": True,
        "canTrade": True,
        "canWithdraw": True,
        "feeTier": 0,
        "updateTime": now_ms,
    }


def coinm_leverage_brackets(symbols: Iterable[str]) -> list[dict[str, Any]]:
    """``GET /dapi/v2/leverageBracket``: one bracket per symbol, capped in the base coin."""
    return [
        {"symbol": symbol, "notionalCoef": 1.0, "brackets": [_COINM_BRACKET]} for symbol in symbols
    ]


def capital_coin(coin: str, free: Decimal, locked: Decimal) -> dict[str, Any]:
    """One ``/sapi/v1/capital/config/getall`` element: the coin, its spot balance and one
    network (enough for ccxt's ``parse_currency``)."""
    return {
        "coin": coin,
        "name": coin,
        "depositAllEnable": True,
        "withdrawAllEnable": True,
        "free": fmt(free),
        "locked": fmt(locked),
        "freeze": "0",
        "withdrawing": "0",
        "ipoing": "0",
        "ipoable": "0",
        "storage": "0",
        "isLegalMoney": False,
        "trading": True,
        "networkList": [
            {
                "network": coin,
                "coin": coin,
                "withdrawIntegerMultiple": "0.00000001",
                "isDefault": True,
                "depositEnable": True,
                "withdrawEnable": True,
                "depositDesc": "",
                "withdrawDesc": "",
                "name": coin,
                "resetAddressStatus": False,
                "withdrawFee": "0",
                "withdrawMin": "0",
                "withdrawMax": "9999999999",
                "minConfirm": 1,
                "unLockConfirm": 0,
                "sameAddress": False,
                "busy": False,
            }
        ],
    }
